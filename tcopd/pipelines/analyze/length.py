"""``tcopd analyze length``: response-length statistics per samples file (the paper's Table 3).

Algorithm choices:
- Token counts are each row's ``num_tokens`` (the sampler's own count), or, with a tokenizer,
  the length of ``tokenizer(response, add_special_tokens=False)``.
- Median and p90 use linear interpolation between order statistics (numpy's default
  ``percentile``, Hyndman & Fan type 7): ``q``-quantile of sorted ``x_0..x_{n-1}`` is
  ``x_i + f·(x_{i+1} − x_i)`` with ``i + f = q·(n − 1)``.
- "correct" / "incorrect" means use the graded rows only (``correct`` true / false); ungraded
  rows (null) count in every other statistic.
- Truncated: ``finish_reason == "length"``. No box: the grader's ``extract_boxed`` finds no
  answer (no ``\\boxed{...}``, or the last one never closes).
- A sweep directory is one column per setting: the samples of its finished runs' evaluations,
  pooled over seeds, as if one file (a setting with no finished run: 0 samples, the rest
  undefined).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tcopd.config import field
from tcopd.pipelines.analyze.sources import (
    Progress,
    Sample,
    column_names,
    has_boxed,
    load_samples,
    samples_columns,
    tokenizer_counter,
)
from tcopd.pipelines.analyze.tables import Row, Table
from tcopd.progress import Event


@dataclass(frozen=True)
class LengthConfig:
    samples: list[str] = field(
        help="samples.jsonl files (from `tcopd eval` or training rollouts), or sweep directories "
        "(one column per setting: its finished runs' samples, pooled over seeds)."
    )
    names: list[str] = field(
        [], help="Column names, one per column (default: each file's directory name)."
    )
    tokenizer: str | None = field(
        None, help="Re-count tokens with this tokenizer instead of num_tokens."
    )


@dataclass(frozen=True)
class LengthResult:
    table: Table


def mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def quantile(xs: Sequence[float], q: float) -> float | None:
    """Type-7 quantile (linear interpolation, numpy's default); ``None`` for no data."""
    if not xs:
        return None
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (pos - lo) * (s[hi] - s[lo])


ROWS: tuple[tuple[str, str], ...] = (
    ("samples", "d"),
    ("mean tokens", ".1f"),
    ("median tokens", ".1f"),
    ("p90 tokens", ".1f"),
    ("max tokens", "d"),
    ("mean tokens (correct)", ".1f"),
    ("mean tokens (incorrect)", ".1f"),
    ("ungraded", "d"),
    ("truncated fraction", ".3f"),
    ("no-box fraction", ".3f"),
)


def length_stats(samples: Sequence[Sample]) -> dict[str, float | int | None]:
    """The statistics of :data:`ROWS` for one column's samples (none: only ``samples`` = 0)."""
    tokens = [s.num_tokens for s in samples]
    n = len(samples)
    if n == 0:
        return {label: 0 if label == "samples" else None for label, _ in ROWS}
    return {
        "samples": n,
        "mean tokens": mean(tokens),
        "median tokens": quantile(tokens, 0.5),
        "p90 tokens": quantile(tokens, 0.9),
        "max tokens": max(tokens),
        "mean tokens (correct)": mean([s.num_tokens for s in samples if s.correct is True]),
        "mean tokens (incorrect)": mean([s.num_tokens for s in samples if s.correct is False]),
        "ungraded": sum(s.correct is None for s in samples),
        "truncated fraction": sum(s.finish_reason == "length" for s in samples) / n,
        "no-box fraction": sum(not has_boxed(s.response) for s in samples) / n,
    }


def run(config: LengthConfig, progress: Progress | None = None) -> LengthResult:
    inputs = samples_columns(config.samples)
    names = column_names(inputs, config.names, kind="file")
    count = tokenizer_counter(config.tokenizer) if config.tokenizer else None
    paths = [p for c in inputs for p in c.paths]
    read = 0
    columns = []
    for c in inputs:
        samples: list[Sample] = []
        for p in c.paths:
            samples += load_samples(p, need=("finish_reason", "correct"), count_tokens=count)
            read += 1
            if progress:
                progress(Event("reading", read, len(paths)))
        columns.append(length_stats(samples))
    rows = tuple(Row(label, tuple(c[label] for c in columns), fmt) for label, fmt in ROWS)
    source = f"tokenizer {config.tokenizer}" if config.tokenizer else "num_tokens"
    notes = (
        f"tokens: {source}; median/p90: linear interpolation (numpy default); "
        "correct/incorrect means over graded samples only",
    )
    return LengthResult(Table("Response length (tokens)", tuple(names), rows, notes=notes))

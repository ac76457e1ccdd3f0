"""Reading the inputs of ``tcopd analyze``: samples files and run directories.

Every problem with an input is one :class:`~tcopd.errors.DataError` that names the file (and the
line, for a row) and says what to do. Run files are only read, never modified: a torn last line of
a ``metrics.jsonl`` that a live run is still appending to is skipped, not truncated away.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcopd.config import read_yaml
from tcopd.errors import ConfigError, DataError
from tcopd.progress import Progress  # noqa: F401  (the analyze pipelines import it from here)
from tcopd.runtime.grading import extract_boxed
from tcopd.runtime.io import iter_jsonl

# ---------------------------------------------------------------------------------------------
# samples.jsonl


@dataclass(frozen=True)
class Sample:
    """The fields of one samples.jsonl row that analyze uses."""

    line: int
    response: str
    num_tokens: int
    finish_reason: str | None
    correct: bool | None


def _field(path: Path, line: int, row: dict[str, Any], name: str, types: tuple[type, ...]) -> Any:
    if name not in row:
        raise DataError(
            f"{path}:{line}: missing field {name!r}; is this a samples.jsonl from `tcopd eval`?"
        )
    value = row[name]
    if not isinstance(value, types) or isinstance(value, bool) and bool not in types:
        want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise DataError(f"{path}:{line}: field {name!r} must be {want}, got {value!r}")
    return value


def load_samples(
    path: str | Path,
    *,
    need: Sequence[str],
    count_tokens: Callable[[str], int] | None = None,
) -> list[Sample]:
    """Read a samples file, checking the fields in ``need`` on every row.

    ``need`` ⊆ {"finish_reason", "correct"}; ``response`` is always needed. Token counts are the
    row's ``num_tokens``, or ``count_tokens(response)`` when that is given (``--tokenizer``).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"samples file {str(p)!r} does not exist; pass the samples.jsonl that `tcopd eval` wrote"
        )
    samples: list[Sample] = []
    for line, row in iter_jsonl(p):
        response = _field(p, line, row, "response", (str,))
        if count_tokens is not None:
            num_tokens = count_tokens(response)
        else:
            if "num_tokens" not in row:
                raise DataError(
                    f"{p}:{line}: missing field 'num_tokens'; pass --tokenizer PATH to count tokens from the response text"
                )
            num_tokens = _field(p, line, row, "num_tokens", (int,))
            if num_tokens < 0:
                raise DataError(f"{p}:{line}: field 'num_tokens' must be ≥ 0, got {num_tokens}")
        finish = (
            _field(p, line, row, "finish_reason", (str, type(None)))
            if "finish_reason" in need
            else None
        )
        correct = _field(p, line, row, "correct", (bool, type(None))) if "correct" in need else None
        samples.append(Sample(line, response, num_tokens, finish, correct))
    if not samples:
        raise DataError(f"samples file {str(p)!r} is empty; nothing to analyze")
    return samples


def tokenizer_counter(path: str) -> Callable[[str], int]:
    """``text -> number of tokens`` with the tokenizer at ``path`` (no special tokens added)."""
    from tcopd.runtime.models import load_tokenizer  # imports torch: only when asked for

    tok = load_tokenizer(path)

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    return count


def has_boxed(text: str) -> bool:
    """Whether the grader can read a boxed answer: the last ``\\boxed{...}`` is closed.

    Same rule as grading (``extract_boxed``): a ``\\boxed{`` cut off by truncation is no answer,
    even when an earlier box was closed.
    """
    return extract_boxed(text) is not None


# ---------------------------------------------------------------------------------------------
# run directories


@dataclass(frozen=True)
class Run:
    """A training run directory: its metrics rows (with line numbers) and resolved config."""

    path: Path
    metrics: list[tuple[int, dict[str, Any]]]
    config: dict[str, Any] | None

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"


def _read_metrics(p: Path) -> list[tuple[int, dict[str, Any]]]:
    lines = p.read_text().splitlines(keepends=True)
    rows: list[tuple[int, dict[str, Any]]] = []
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            if i == len(lines) and not raw.endswith("\n"):
                break  # torn last line of a run still being written: skip it, leave the file alone
            raise DataError(f"{p}:{i}: malformed JSON ({e.msg}); fix or delete that line") from e
        if not isinstance(row, dict):
            raise DataError(f"{p}:{i}: each line must be a JSON object, got {type(row).__name__}")
        rows.append((i, row))
    return rows


def load_run(path: str | Path, *, need_config: bool = False) -> Run:
    """Read ``metrics.jsonl`` (required, non-empty) and ``config.yaml`` of a run directory."""
    d = Path(path)
    if not d.is_dir():
        raise DataError(
            f"run directory {str(d)!r} does not exist; pass the directory `tcopd train` wrote"
        )
    mp = d / "metrics.jsonl"
    if not mp.is_file():
        raise DataError(f"{mp} does not exist; is {str(d)!r} a `tcopd train` run directory?")
    metrics = _read_metrics(mp)
    if not metrics:
        raise DataError(f"{mp} is empty; the run has not finished a step yet")
    for line, row in metrics:
        step = row.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            raise DataError(f"{mp}:{line}: field 'step' must be an integer, got {step!r}")
    config = None
    cp = d / "config.yaml"
    if cp.is_file():
        try:
            config = read_yaml(cp)
        except ConfigError as e:
            raise DataError(str(e)) from e
    elif need_config:
        raise DataError(
            f"{cp} does not exist; the run's resolved config is needed for its teachers"
        )
    return Run(d, metrics, config)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def numeric_metrics(runs: Sequence[Run]) -> list[str]:
    """Names of the scalar numeric metrics that appear in any run (sorted)."""
    names = {k for run in runs for _, row in run.metrics for k, v in row.items() if is_number(v)}
    names.discard("step")
    return sorted(names)

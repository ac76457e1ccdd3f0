"""``tcopd analyze phrases``: how often each file's responses use given phrases (section 6.2).

The paper observes that the coding anti-expert "begins by explicitly defining variables,
restating all given quantities, and constructing a detailed solution plan"; this makes that
observation a number.

Algorithm choices:
- rate = 1000 · (occurrences in all responses of the file) / (total response tokens of the file),
  tokens counted as in ``analyze length`` (``num_tokens`` or a given tokenizer).
- Matching is case-insensitive and word-boundary aware: a phrase matches only where it is not
  preceded or followed by a letter, digit or underscore ("step 1" does not match "step 12",
  "wait" does not match "awaited"). Whitespace in a phrase matches any run of whitespace, and an
  apostrophe matches both ' and ’. Occurrences do not overlap.
- A sweep directory is one column per setting: its finished runs' evaluation samples pooled over
  seeds (occurrences and tokens summed over them).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from tcopd.config import field
from tcopd.errors import ConfigError
from tcopd.pipelines.analyze.sources import (
    Progress,
    column_names,
    load_samples,
    samples_columns,
    tokenizer_counter,
)
from tcopd.pipelines.analyze.tables import Row, Table
from tcopd.progress import Event

DEFAULT_PHRASES: tuple[str, ...] = ("let's", "we should", "step 1", "wait", "define")


@dataclass(frozen=True)
class PhrasesConfig:
    samples: list[str] = field(
        help="samples.jsonl files (from `tcopd eval` or training rollouts), or sweep directories "
        "(one column per setting: its finished runs' samples, pooled over seeds)."
    )
    names: list[str] = field(
        [], help="Column names, one per column (default: each file's directory name)."
    )
    phrases: list[str] = field([], help="Extra phrases to count, after the defaults.")
    default_phrases: bool = field(
        True, help="Count the default phrases (let's, we should, step 1, wait, define)."
    )
    tokenizer: str | None = field(
        None, help="Re-count tokens with this tokenizer instead of num_tokens."
    )


@dataclass(frozen=True)
class PhrasesResult:
    table: Table


def phrase_pattern(phrase: str) -> re.Pattern[str]:
    """Case-insensitive, word-boundary-aware regex for ``phrase`` (see the module docstring)."""
    words = phrase.strip().split()
    if not words:
        raise ConfigError("--phrase must not be empty")
    parts = ["".join("['’]" if ch in "'’" else re.escape(ch) for ch in w) for w in words]
    return re.compile(r"(?<!\w)" + r"\s+".join(parts) + r"(?!\w)", re.IGNORECASE)


def count_phrase(pattern: re.Pattern[str], texts: Sequence[str]) -> int:
    return sum(len(pattern.findall(t)) for t in texts)


def phrase_list(config: PhrasesConfig) -> list[str]:
    """Defaults (unless switched off) then the extra phrases, without case-insensitive duplicates."""
    out: list[str] = []
    for p in (*(DEFAULT_PHRASES if config.default_phrases else ()), *config.phrases):
        if p.strip().lower() not in {q.lower() for q in out}:
            out.append(p.strip())
    if not out:
        raise ConfigError("no phrases to count; give --phrase TEXT or keep the default phrases")
    return out


def run(config: PhrasesConfig, progress: Progress | None = None) -> PhrasesResult:
    phrases = phrase_list(config)
    patterns = [phrase_pattern(p) for p in phrases]
    inputs = samples_columns(config.samples)
    names = column_names(inputs, config.names, kind="file")
    count = tokenizer_counter(config.tokenizer) if config.tokenizer else None
    paths = [p for c in inputs for p in c.paths]
    rates: list[list[float | None]] = [[] for _ in phrases]
    totals: list[int] = []
    read = 0
    for c in inputs:
        texts, total = [], 0
        for p in c.paths:
            samples = load_samples(p, need=(), count_tokens=count)
            texts += [s.response for s in samples]
            total += sum(s.num_tokens for s in samples)
            read += 1
            if progress:
                progress(Event("reading", read, len(paths)))
        totals.append(total)
        for k, pat in enumerate(patterns):
            rates[k].append(1000.0 * count_phrase(pat, texts) / total if total else None)
    rows = [Row("(total tokens)", tuple(totals), "d")]
    rows += [Row(ph, tuple(r), ".3f") for ph, r in zip(phrases, rates, strict=True)]
    notes = ("rate = occurrences per 1,000 response tokens; case-insensitive, whole words",)
    return PhrasesResult(
        Table("Phrase rates per 1,000 tokens", tuple(names), tuple(rows), "phrase", notes)
    )

"""Reading the inputs of ``tcopd analyze``: samples files, run directories and sweep directories.

Every problem with an input is one :class:`~tcopd.errors.DataError` that names the file (and the
line, for a row) and says what to do. Run files are only read, never modified: a torn last line of
a ``metrics.jsonl`` that a live run is still appending to is skipped, not truncated away.

A sweep directory (``tcopd sweep``: it has a ``sweep_config.yaml``) given where run directories
are expected becomes one column per run (each run is its own training); given where samples
files are expected, one column per setting that pools its finished runs' evaluation samples over
seeds (length and phrase rates are statistics over samples). See :func:`run_columns` and
:func:`samples_columns`.
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
from tcopd.pipelines.analyze.tables import unique_names
from tcopd.progress import Progress  # noqa: F401  (the analyze pipelines import it from here)
from tcopd.runtime.data.io import iter_jsonl
from tcopd.runtime.evaluation.grading import extract_boxed

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
    from tcopd.runtime.models.loading import load_tokenizer  # imports torch: only when asked for

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


# ---------------------------------------------------------------------------------------------
# columns: an input is one column, a sweep directory (`tcopd sweep`) several


@dataclass(frozen=True)
class Column:
    """One column of a table: the file(s) it reads and, for a sweep's column, its own name."""

    paths: tuple[Path, ...]  # a run directory or samples file; a sweep setting's samples files
    name: str | None = None  # None: named after its path (``unique_names``)
    sweep: Path | None = None  # the sweep directory it comes from


def _sweep_runs(path: Path) -> list[tuple[Any, str]] | None:
    """``[(run, status)]`` of the sweep in ``path``; None when ``path`` is not a sweep directory."""
    if not path.is_dir():
        return None
    from tcopd.pipelines import sweep  # imports torch: only for a directory that may be a sweep

    return sweep.load_runs(path) if sweep.is_sweep_dir(path) else None


def _has_step(train_dir: Path) -> bool:
    """Whether a run has logged a complete metrics row (a run not started yet has none)."""
    p = train_dir / "metrics.jsonl"
    return p.is_file() and b"\n" in p.read_bytes()


def run_columns(inputs: Sequence[str | Path]) -> list[Column]:
    """Run directories as given; a sweep directory gives one column per run that has logged a
    step (its ``train/`` directory), named ``<setting> seed<k>``, seed-major."""
    columns: list[Column] = []
    for x in inputs:
        p = Path(x)
        runs = None if (p / "metrics.jsonl").exists() else _sweep_runs(p)
        if runs is None:
            columns.append(Column((p,)))
            continue
        mine = [
            Column((r.train_dir,), f"{r.setting.name} seed{r.seed}", p)
            for r, _ in runs
            if _has_step(r.train_dir)
        ]
        if not mine:
            raise DataError(f"sweep directory {str(p)!r} has no run with a logged step yet")
        columns += mine
    return columns


def samples_columns(inputs: Sequence[str | Path]) -> list[Column]:
    """Samples files as given; a sweep directory gives one column per setting, named after it,
    that pools the final evaluations (``eval/samples.jsonl``) of its finished runs (status
    ``done``) over seeds. A setting with no finished run is a column with no samples."""
    columns: list[Column] = []
    for x in inputs:
        p = Path(x)
        runs = _sweep_runs(p)
        if runs is None:
            columns.append(Column((p,)))
            continue
        by_setting: dict[str, list[Path]] = {}
        for r, status in runs:
            files = by_setting.setdefault(r.setting.name, [])
            if status == "done":
                files.append(r.eval_dir / "samples.jsonl")
        if not any(by_setting.values()):
            raise DataError(f"sweep directory {str(p)!r} has no finished evaluation yet")
        columns += [Column(tuple(f), name, p) for name, f in by_setting.items()]
    return columns


def column_names(columns: Sequence[Column], names: Sequence[str] | None, kind: str) -> list[str]:
    """``names`` (one per column), else plain inputs named as ``unique_names`` does and sweep
    columns by their own name, with the sweep directory's name in front where two clash."""
    if not any(c.sweep is not None for c in columns):
        return unique_names([c.paths[0] for c in columns], names, kind)
    if names:
        if len(names) != len(columns):
            raise ConfigError(
                f"got {len(names)} --name for {len(columns)} columns (a sweep directory gives "
                "several); give one --name per column or none"
            )
        return unique_names([Path(str(i)) for i in range(len(names))], names, kind)
    plain = iter(unique_names([c.paths[0] for c in columns if c.sweep is None], None, kind))
    out = [c.name if c.sweep is not None else next(plain) for c in columns]
    out = [
        f"{c.sweep.name}/{o}" if c.sweep is not None and out.count(o) > 1 else o
        for c, o in zip(columns, out, strict=True)
    ]
    seen: dict[str, int] = {}
    final = []
    for o in out:
        seen[o] = seen.get(o, 0) + 1
        final.append(o if out.count(o) == 1 else f"{o}#{seen[o]}")
    return final

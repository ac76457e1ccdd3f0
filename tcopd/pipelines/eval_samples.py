"""The ``samples.jsonl`` of ``tcopd eval``: its rows, re-grading a file, and the summary.

Algorithm choices:

- One row per sample (:data:`SAMPLE_FIELDS`); ``correct`` is True/False, or None when the grader
  timed out or crashed (counted as not correct and reported as ``ungraded``).
- The summary is always computed from the rows, never from counters kept during the run, so a
  resumed run's summary equals an uninterrupted one's.
- Re-grading (``--from-samples``) grades every row again and counts every sample, also when
  problems have different numbers of samples n_p: mean@n is then the mean of each problem's own
  mean and pass@k goes up to the smallest n_p (``core.metrics``). A repeated
  ``(problem_id, sample_index)`` is an error: it would otherwise be counted once, silently.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tcopd.core import metrics
from tcopd.errors import DataError
from tcopd.progress import Progress, report
from tcopd.runtime.data import io
from tcopd.runtime.data.rows import ANSWER_FORMATS
from tcopd.runtime.evaluation.grading import Grader, extract_answer

SAMPLE_FIELDS = (
    "problem_id",
    "sample_index",
    "prompt",
    "response",
    "num_tokens",
    "finish_reason",
    "gold",
    "extracted",
    "correct",
)
# What a row of a file to re-grade must hold; num_tokens and finish_reason default to 0 and "stop".
REGRADE_FIELDS = ("problem_id", "sample_index", "response", "gold")

Lines = Sequence[tuple[int, dict[str, Any]]]  # (line number, row) pairs of a jsonl file


def summarize_samples(
    rows: Sequence[dict[str, Any]],
    problem_order: Sequence[str],
    n: int | None,
    header: dict[str, Any],
) -> dict[str, Any]:
    """summary.json content from sample rows (problems in ``problem_order``).

    ``n``: keep each problem's first n samples (a generation run's n); None: every sample, however
    many each problem has. ``n`` in the summary is that common n, or None when n_p varies;
    ``n_min`` / ``n_max`` give the range either way.
    """
    by_problem: dict[str, dict[int, dict[str, Any]]] = {}
    for r in rows:
        by_problem.setdefault(str(r["problem_id"]), {})[int(r["sample_index"])] = r
    correct, tokens, truncated = [], [], 0
    for pid in problem_order:
        samples = by_problem.get(pid, {})
        ordered = [samples[s] for s in sorted(samples)][:n]
        if not ordered:
            continue
        correct.append([s["correct"] for s in ordered])
        tokens.extend(int(s["num_tokens"]) for s in ordered)
        truncated += sum(1 for s in ordered if s["finish_reason"] == "length")
    if not correct:
        raise DataError("no graded samples to summarise")
    s = metrics.summarize(correct)
    n_min, n_max = min(map(len, correct)), max(map(len, correct))
    return {
        **header,
        "n": n if n is not None else (n_min if n_min == n_max else None),
        "n_min": n_min,
        "n_max": n_max,
        "problems": s["problems"],
        "samples": s["samples"],
        "mean_at_n": 100.0 * s["mean_at_n"],
        "stderr": 100.0 * s["stderr"],
        "pass_at_k": {str(k): 100.0 * v for k, v in s["pass_at_k"].items()},
        "mean_tokens": sum(tokens) / len(tokens),
        "truncated_fraction": truncated / len(tokens),
        "ungraded": s["ungraded"],
    }


# ------------------------------------------------------------------------------- re-grading


def read_samples(path: Path) -> tuple[Lines, dict[str, int]]:
    """The rows of a file to re-grade and n_p per problem (file order); bad files are errors."""
    if not path.is_file():
        raise DataError(f"samples file {str(path)!r} does not exist")
    rows = list(io.iter_jsonl(path))
    for lineno, row in rows:
        missing = [f for f in REGRADE_FIELDS if f not in row]
        if missing:
            raise DataError(
                f"{path}:{lineno}: sample row lacks {', '.join(missing)}; "
                f"each row needs {', '.join(REGRADE_FIELDS)}"
            )
    if not rows:
        raise DataError(f"{path}: no samples")
    return rows, samples_per_problem(rows, path)


def samples_per_problem(rows: Lines, path: Path) -> dict[str, int]:
    """n_p per problem, in file order; a repeated ``(problem_id, sample_index)`` is an error."""
    first_line: dict[tuple[str, int], int] = {}
    per_problem: dict[str, int] = {}
    for lineno, row in rows:
        key = (str(row["problem_id"]), int(row["sample_index"]))
        if key in first_line:
            raise DataError(
                f"{path}:{lineno}: problem {key[0]!r} sample_index {key[1]} appears again "
                f"(first on line {first_line[key]}); each (problem_id, sample_index) must be unique"
            )
        first_line[key] = lineno
        per_problem[key[0]] = per_problem.get(key[0], 0) + 1
    return per_problem


def source_header(path: Path) -> dict[str, Any]:
    """benchmark, model (and sampling) of the run that wrote ``path``, from its summary.json.

    Without a readable summary beside the file: the file's stem and no model.
    """
    header: dict[str, Any] = {"benchmark": path.stem, "model": None}
    old_summary = path.parent / "summary.json"
    if old_summary.is_file():
        try:
            old = json.loads(old_summary.read_text())
            header = {"benchmark": old.get("benchmark"), "model": old.get("model")}
            if "sampling" in old:
                header["sampling"] = old["sampling"]
        except json.JSONDecodeError:
            pass
    return header


def varying_n_warning(per_problem: dict[str, int]) -> str | None:
    """The one warning for a file whose problems have different numbers of samples."""
    n_min, n_max = min(per_problem.values()), max(per_problem.values())
    if n_min == n_max:
        return None
    return (
        f"samples per problem vary from {n_min} to {n_max}: mean@n uses every "
        f"sample (each problem's own mean); pass@k reported for k ≤ {n_min}"
    )


def grade_rows(
    rows: Lines,
    workers: int,
    timeout_s: float,
    progress: Progress | None = None,
    detail: str = "",
) -> list[dict[str, Any]]:
    """Every row graded again: SAMPLE_FIELDS first (defaults filled in), then the row's other keys."""
    for lineno, row in rows:
        if (row.get("answer_format") or "boxed") not in ANSWER_FORMATS:
            raise DataError(
                f"line {lineno}: answer_format {row['answer_format']!r} is not one of "
                f"{', '.join(ANSWER_FORMATS)}"
            )
    with Grader(workers, timeout_s) as grader:
        for i, (_, row) in enumerate(rows):
            fmt = row.get("answer_format") or "boxed"
            grader.submit(i, str(row["gold"]), str(row["response"]), answer_format=fmt)
        verdicts = {}
        for k, v in grader.as_completed():
            verdicts[k] = v
            report(progress, "graded", done=len(verdicts), total=len(rows), detail=detail)
    graded = []
    for i, (_, row) in enumerate(rows):
        new = {f: row.get(f) for f in SAMPLE_FIELDS}
        new.update({k: v for k, v in row.items() if k not in new})
        new["num_tokens"] = row.get("num_tokens", 0) or 0
        new["finish_reason"] = row.get("finish_reason", "stop") or "stop"
        new["extracted"] = extract_answer(str(row["response"]), row.get("answer_format") or "boxed")
        new["correct"] = verdicts[i]
        graded.append(new)
    return graded

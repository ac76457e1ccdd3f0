"""Loaders of the paper's datasets and the prepared-row format (benchmarks by name:
:mod:`tcopd.pipelines.benchmarks`).

Prepared rows are verl's row format plus a ``domain`` label (docs/internals.md "Data")::

    {"data_source", "prompt": [{"role": "user", "content": question + instruction}], "ability",
     "reward_model": {"style": "rule", "ground_truth": str}, "extra_info": {"split", "index", ...},
     "domain"}

Sources (docs/prepare.md). Each one loads from the Hub with ``datasets.load_dataset`` or, with
``from_path``, from a local copy in the Hub's own column layout (a file, or a directory whose
jsonl/json/parquet/csv files are read in name order and joined):

==========  ============================================  ========================================
name        Hub id (config / file)                        columns used
==========  ============================================  ========================================
deepmath    zwhe99/DeepMath-103K                          question, final_answer, difficulty
gopd-math   Keven16/G-OPD-Training-Data                   verl rows (prompt, reward_model, ...)
            (DeepMath-103K/train_filtered_level6.parquet)
aime24      HuggingFaceH4/aime_2024                       problem (or question), answer (AI-MO's
                                                          layout with ``url``: rows whose url
                                                          has 2024)
aime25      opencompass/AIME2025 (AIME2025-I + -II, test) question (or problem: math-ai's one-file
                                                          copy), answer
math500     HuggingFaceH4/MATH-500 (test)                 problem, answer
==========  ============================================  ========================================

Control characters: some AIME 2025 copies hold ``\\x0crac`` where ``\\frac`` lost its
backslash escape. The benchmarks (aime24, aime25, math500) and math-domain ``load_file`` rows
are repaired — a form feed, tab, backspace, carriage return, bell or vertical tab followed by a
letter becomes ``\\f``, ``\\t``, ``\\b``, ``\\r``, ``\\a``, ``\\v`` (a newline only before a
known command tail such as ``eq``, ``u``, ``abla``) — and any other control character is rejected
with the row named. Nothing is passed on silently: the number of repaired rows is reported.
Rows of another domain (code) are left as they are: a tab or a newline before a letter is code
there, not a lost escape.

This is the only module that imports ``datasets`` (lazily, so importing it is cheap).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcopd.errors import DataError
from tcopd.runtime.data.io import read_rows
from tcopd.runtime.data.prompts import DEFAULT_INSTRUCTION
from tcopd.runtime.data.rows import ANSWER_FORMATS, make_row

REQUIRED_FIELDS = ("data_source", "prompt", "ability", "reward_model", "extra_info", "domain")
SOURCES = ("deepmath", "gopd-math", "aime24", "aime25", "math500")
ROW_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


@dataclass(frozen=True)
class HubSource:
    """Where a named source lives on the Hub and which columns it needs.

    ``question_alt`` is the question column of another common public copy, used when a local
    copy has it instead of ``question``.
    """

    hub_id: str
    question: str
    answer: str
    split: str
    configs: tuple[str | None, ...] = (None,)
    data_files: str | None = None
    repair: bool = False
    question_alt: str | None = None


HUB = {
    "deepmath": HubSource("zwhe99/DeepMath-103K", "question", "final_answer", "train"),
    "gopd-math": HubSource(
        "Keven16/G-OPD-Training-Data",
        "prompt",
        "reward_model",
        "train",
        data_files="DeepMath-103K/train_filtered_level6.parquet",
    ),
    "aime24": HubSource(
        "HuggingFaceH4/aime_2024",
        "problem",
        "answer",
        "train",
        repair=True,
        question_alt="question",
    ),
    "aime25": HubSource(
        "opencompass/AIME2025",
        "question",
        "answer",
        "test",
        ("AIME2025-I", "AIME2025-II"),
        repair=True,
        question_alt="problem",  # math-ai/aime25: one file of 30 rows (problem, answer, id)
    ),
    "math500": HubSource("HuggingFaceH4/MATH-500", "problem", "answer", "test", repair=True),
}


@dataclass
class LoadReport:
    """What a loader did: rows read, rows kept, rows repaired, and notes for the user."""

    read: int = 0
    kept: int = 0
    repaired: int = 0
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- field checking


def answer_text(value: Any, where: str) -> str:
    """A gold answer as a string; numbers are formatted, anything else is a DataError."""
    if isinstance(value, bool) or value is None or not isinstance(value, (str, int, float)):
        raise DataError(
            f"{where}: the answer must be a string or a number, got {type(value).__name__} {value!r}"
        )
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if not text:
        raise DataError(f"{where}: the answer is empty")
    return text


def question_text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: the question must be a non-empty string, got {value!r}")
    return value


# ----------------------------------------------------------------------- control characters

_ESCAPES = {"\x0c": "\\f", "\t": "\\t", "\x08": "\\b", "\r": "\\r", "\x07": "\\a", "\x0b": "\\v"}
_ESCAPE_RE = re.compile("[" + "".join(_ESCAPES) + "](?=[A-Za-z])")
# "\n" is a legitimate newline far more often than a lost "\n..." command: repair only before
# the tails of common LaTeX commands (\neq, \nu, \nabla, \not, \ne, \ni, \newline).
_NEWLINE_RE = re.compile(r"\n(?=(?:eq|e|u|abla|ot|i|ewline)(?![A-Za-z]))")
_BAD_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def repair_control_chars(text: str, where: str) -> tuple[str, bool]:
    """Undo lost backslash escapes (``"\\x0crac"`` → ``"\\\\frac"``); reject what can't be repaired.

    Returns ``(text, changed)``. Newlines and tabs that are not lost escapes are whitespace and
    stay; any other remaining control character raises a DataError naming ``where``.
    """
    fixed = _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group(0)], text)
    fixed = _NEWLINE_RE.sub(lambda m: "\\n", fixed)
    bad = _BAD_CONTROL_RE.search(fixed)
    if bad:
        ctx = fixed[max(0, bad.start() - 15) : bad.end() + 15]
        raise DataError(
            f"{where}: control character {bad.group(0)!r} that is not a lost LaTeX escape "
            f"(near {ctx!r}); fix the source file and retry"
        )
    return fixed, fixed != text


def _repair_row(q: str, a: str, where: str, report: LoadReport) -> tuple[str, str]:
    """Question and answer through :func:`repair_control_chars`; counts the row if either changed."""
    q, q_fixed = repair_control_chars(q, where)
    a, a_fixed = repair_control_chars(a, where)
    report.repaired += int(q_fixed or a_fixed)
    return q, a


def _note_repairs(report: LoadReport) -> None:
    if report.repaired:
        report.notes.append(f"repaired lost backslash escapes in {report.repaired} row(s)")


# ------------------------------------------------------------------------------ raw loading


def _local_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.suffix.lower() in ROW_SUFFIXES and p.is_file()
        )
        if not files:
            raise DataError(
                f"--from {str(path)!r}: the directory holds no .jsonl/.json/.parquet/.csv file"
            )
        return files
    if not path.exists():
        raise DataError(f"--from {str(path)!r} does not exist")
    return [path]


def read_local(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a local file, or of every data file in a directory (name order)."""
    rows: list[dict[str, Any]] = []
    for f in _local_files(Path(path)):
        rows.extend(r for _, r in read_rows(f))
    return rows


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def read_hub(name: str) -> list[dict[str, Any]]:
    """Rows of source ``name`` from the Hugging Face Hub (all configs joined)."""
    src = HUB[name]
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - datasets is a dependency
        raise DataError(
            f"the 'datasets' package is needed to load {src.hub_id} ({e}); or pass --from PATH"
        ) from e
    rows: list[dict[str, Any]] = []
    for config in src.configs:
        try:
            ds = datasets.load_dataset(
                src.hub_id, config, split=src.split, data_files=src.data_files
            )
        except Exception as e:  # network, offline mode, missing repo: all one message
            what = src.hub_id + (f" ({config})" if config else "")
            raise DataError(
                f"could not load {what} from the Hugging Face Hub ({_one_line(e)}); "
                f"download it where the Hub is reachable and pass --from PATH"
            ) from e
        rows.extend(ds.to_list())
    return rows


def check_columns(
    rows: Sequence[Mapping[str, Any]],
    needed: Iterable[str],
    what: str,
    alternatives: Mapping[str, str] | None = None,
) -> None:
    """A DataError naming the missing columns (and ``alternatives[c]``, another accepted name)."""
    if not rows:
        raise DataError(f"{what}: no rows")
    present = list(rows[0].keys())
    missing = [c for c in needed if c not in rows[0]]
    if missing:
        alt = alternatives or {}
        names = [repr(c) + (f" (or {alt[c]!r})" if c in alt else "") for c in missing]
        raise DataError(
            f"{what}: missing column(s) {', '.join(names)}; the columns are: {', '.join(present)}"
        )


# ------------------------------------------------------------------------------- the sources


def load_source(
    name: str,
    from_path: str | Path | None = None,
    *,
    min_difficulty: float = 6.0,
    instruction: str = DEFAULT_INSTRUCTION,
    report: LoadReport | None = None,
) -> list[dict[str, Any]]:
    """Prepared rows of named source ``name`` (Hub, or ``from_path`` in the Hub's layout)."""
    if name not in HUB:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(SOURCES)}, file, toy")
    report = report if report is not None else LoadReport()
    what = str(from_path) if from_path is not None else HUB[name].hub_id
    raw = read_local(from_path) if from_path is not None else read_hub(name)
    report.read = len(raw)
    if name == "gopd-math":
        rows = _verl_rows(raw, what, instruction)
    else:
        rows = _plain_rows(name, raw, what, min_difficulty, instruction, report)
    if not rows:
        raise DataError(
            f"{what}: no rows left after filtering (read {len(raw)}); check the filter settings"
        )
    report.kept = len(rows)
    return rows


def _plain_rows(
    name: str,
    raw: list[dict[str, Any]],
    what: str,
    min_difficulty: float,
    instruction: str,
    report: LoadReport,
) -> list[dict[str, Any]]:
    src = HUB[name]
    q_col, a_col = src.question, src.answer
    if src.question_alt and raw and q_col not in raw[0] and src.question_alt in raw[0]:
        q_col = src.question_alt
    needed = [q_col, a_col] + (["difficulty"] if name == "deepmath" else [])
    alternatives = {src.question: src.question_alt} if src.question_alt else None
    check_columns(raw, needed, what, alternatives)
    if name == "aime24" and "url" in raw[0]:  # AI-MO/aimo-validation-aime: 2022–2024 mixed
        raw = [r for r in raw if "2024" in str(r.get("url", ""))]
        report.notes.append(f"kept {len(raw)} rows whose url contains 2024")
    rows = []
    for i, r in enumerate(raw):
        where = f"{what} row {i}"
        if name == "deepmath":
            try:
                difficulty = float(r["difficulty"])
            except (TypeError, ValueError):
                raise DataError(
                    f"{where}: difficulty {r['difficulty']!r} is not a number"
                ) from None
            if difficulty < min_difficulty:
                continue
        q, a = question_text(r.get(q_col), where), answer_text(r.get(a_col), where)
        if src.repair:
            q, a = _repair_row(q, a, where, report)
        extra: dict[str, Any] = {"source": src.hub_id, "source_index": i}
        if "id" in r:  # public copies number their rows (math-ai's aime25, H4's aime24)
            extra["id"] = str(r["id"])
        if name == "deepmath":
            extra.update(difficulty=float(r["difficulty"]), topic=str(r.get("topic", "")))
        if name == "math500":
            extra.update(
                subject=str(r.get("subject", "")),
                level=str(r.get("level", "")),
                unique_id=str(r.get("unique_id", "")),
            )
        split = "train" if name == "deepmath" else "test"
        rows.append(
            make_row(
                q,
                a,
                data_source=name,
                split=split,
                index=len(rows),
                instruction=instruction,
                extra=extra,
            )
        )
    if name == "deepmath":
        report.notes.append(f"{len(rows)} of {len(raw)} rows have difficulty >= {min_difficulty:g}")
    _note_repairs(report)
    return rows


def _verl_rows(raw: list[dict[str, Any]], what: str, instruction: str) -> list[dict[str, Any]]:
    """G-OPD's parquet is already in verl format: validate it and add ``domain``.

    Its prompts already carry their instruction sentence, so ``instruction`` is not appended.
    """
    check_columns(raw, ["prompt", "reward_model"], what)
    rows = []
    for i, r in enumerate(raw):
        where = f"{what} row {i}"
        messages = _messages(r["prompt"], where)
        gt = (
            r["reward_model"].get("ground_truth")
            if isinstance(r["reward_model"], Mapping)
            else None
        )
        extra = dict(r.get("extra_info") or {})
        extra.setdefault("split", "train")
        extra.setdefault("index", i)
        rows.append(
            {
                "data_source": str(r.get("data_source") or "gopd-math"),
                "prompt": messages,
                "ability": str(r.get("ability") or "math"),
                "reward_model": {"style": "rule", "ground_truth": answer_text(gt, where)},
                "extra_info": extra,
                "domain": str(r.get("domain") or "math"),
            }
        )
    return rows


def load_file(
    path: str | Path,
    *,
    question_field: str = "question",
    answer_field: str = "answer",
    domain: str = "math",
    instruction: str = DEFAULT_INSTRUCTION,
    report: LoadReport | None = None,
) -> list[dict[str, Any]]:
    """Prepared rows of any local jsonl/json/parquet/csv file with a question and answer field.

    Math rows get the benchmarks' control-character rule (module docstring): lost LaTeX escapes
    are repaired and counted in ``report``, any other control character is rejected. Rows of
    another domain are left as they are (tabs and newlines are code there).
    """
    report = report if report is not None else LoadReport()
    raw = read_local(path)
    what = str(path)
    check_columns(raw, [question_field, answer_field], what)
    rows = []
    for i, r in enumerate(raw):
        where = f"{what} row {i}"
        q, a = question_text(r.get(question_field), where), answer_text(r.get(answer_field), where)
        if domain == "math":
            q, a = _repair_row(q, a, where, report)
        rows.append(
            make_row(
                q,
                a,
                data_source=Path(path).stem,
                domain=domain,
                split="train",
                index=i,
                instruction=instruction,
                extra={"source": what},
            )
        )
    report.read = report.kept = len(rows)
    _note_repairs(report)
    return rows


# --------------------------------------------------------------------------- prepared rows


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if hasattr(value, "tolist"):  # numpy arrays from some parquet readers
        value = value.tolist()
    if (
        not isinstance(value, (list, tuple))
        or not value
        or not all(isinstance(m, Mapping) and "role" in m and "content" in m for m in value)
    ):
        raise DataError(
            f"{where}: 'prompt' must be a non-empty list of {{role, content}} messages, got {value!r}"
        )
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]


def validate_row(row: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check one prepared row (see module docstring); return it with a string ground truth."""
    missing = [f for f in REQUIRED_FIELDS if f not in row or row[f] is None]
    if missing:
        raise DataError(
            f"{where}: missing field(s) {', '.join(repr(f) for f in missing)}; prepared rows need "
            f"{', '.join(REQUIRED_FIELDS)} (make them with `tcopd prepare`)"
        )
    rm = row["reward_model"]
    if not isinstance(rm, Mapping) or rm.get("ground_truth") is None:
        raise DataError(f"{where}: missing field 'reward_model.ground_truth'")
    if not isinstance(row["extra_info"], Mapping):
        raise DataError(
            f"{where}: 'extra_info' must be a mapping, got {type(row['extra_info']).__name__}"
        )
    fmt = rm.get("answer_format") or "boxed"
    if fmt not in ANSWER_FORMATS:
        raise DataError(
            f"{where}: reward_model.answer_format {fmt!r} is not one of {', '.join(ANSWER_FORMATS)}"
        )
    out = dict(row)
    out["prompt"] = _messages(row["prompt"], where)
    out["reward_model"] = {**dict(rm), "ground_truth": answer_text(rm["ground_truth"], where)}
    out["extra_info"] = dict(row["extra_info"])
    return out


def answer_format_of(rows: Sequence[Mapping[str, Any]], source: str) -> str:
    """The one answer format of validated ``rows`` (``reward_model.answer_format``); a file
    whose rows mix formats is refused (its run would grade with one reader)."""
    formats = {r["reward_model"].get("answer_format") or "boxed" for r in rows}
    if len(formats) > 1:
        raise DataError(
            f"{source}: rows mix answer formats ({', '.join(sorted(formats))}); "
            "keep one format per data file"
        )
    return formats.pop() if formats else "boxed"


def load_prepared(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a prepared file (parquet/jsonl), each validated; an empty file is an error."""
    numbered = read_rows(path)
    if not numbered:
        raise DataError(f"{path}: no rows; prepare data with `tcopd prepare`")
    return [validate_row(r, f"{path} row {n}") for n, r in numbered]

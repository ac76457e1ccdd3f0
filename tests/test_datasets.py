"""Dataset loaders on local fixtures in each source's own Hub column layout (nothing touches the Hub)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest

from tcopd.errors import DataError
from tcopd.pipelines.benchmarks import load_benchmark
from tcopd.runtime.data import datasets as ds
from tcopd.runtime.data.prompts import DEFAULT_INSTRUCTION

FIX = Path(__file__).parent / "fixtures"


pytestmark = pytest.mark.usefixtures("offline_hub")  # tests/conftest.py


def _check_row(row):
    assert set(ds.REQUIRED_FIELDS) <= set(row)
    assert row["prompt"][0]["role"] == "user"
    assert row["reward_model"]["style"] == "rule"
    assert isinstance(row["reward_model"]["ground_truth"], str)
    assert {"split", "index"} <= set(row["extra_info"])


def test_deepmath_filters_by_difficulty_and_reports_survivors():
    report = ds.LoadReport()
    rows = ds.load_source("deepmath", FIX / "deepmath.jsonl", min_difficulty=6, report=report)
    raw = [json.loads(line) for line in (FIX / "deepmath.jsonl").read_text().splitlines()]
    expected = [r for r in raw if r["difficulty"] >= 6]
    assert [r["reward_model"]["ground_truth"] for r in rows] == [
        r["final_answer"] for r in expected
    ]
    assert rows[0]["prompt"][0]["content"] == expected[0]["question"] + DEFAULT_INSTRUCTION
    assert (report.read, report.kept) == (6, 3)
    assert any("3 of 6" in n for n in report.notes)
    for i, r in enumerate(rows):
        _check_row(r)
        assert r["extra_info"]["index"] == i and r["domain"] == "math"
    assert [
        r["extra_info"]["index"]
        for r in ds.load_source("deepmath", FIX / "deepmath.jsonl", min_difficulty=7.5)
    ] == [0, 1]


def test_deepmath_empty_after_filter_is_an_error():
    with pytest.raises(DataError, match="no rows left after filtering"):
        ds.load_source("deepmath", FIX / "deepmath.jsonl", min_difficulty=9.5)


def test_gopd_parquet_rows_keep_their_prompt_and_gain_domain():
    rows = ds.load_source("gopd-math", FIX / "gopd_math.parquet")
    assert len(rows) == 3
    assert rows[0]["prompt"][0]["content"].endswith(DEFAULT_INSTRUCTION)
    assert not rows[0]["prompt"][0]["content"].endswith(DEFAULT_INSTRUCTION * 2)
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["11", "6", "\\sqrt{2}"]
    for r in rows:
        _check_row(r)


def test_aime24_h4_and_aimo_layouts():
    rows = ds.load_source("aime24", FIX / "aime24.jsonl")
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["4", "066"]
    assert "\\triangle" in rows[1]["extra_info"]["question"]
    aimo = ds.load_source("aime24", FIX / "aimo_validation_aime.jsonl")
    assert [r["extra_info"]["question"] for r in aimo] == ["A 2024 problem: compute $2+3$."]
    assert aimo[0]["reward_model"]["ground_truth"] == "5"  # integer column → string


def test_aime25_joins_configs_and_repairs_control_characters():
    raw_line = (FIX / "aime25" / "AIME2025-I.jsonl").read_text().splitlines()[1]
    assert "\x0c" in json.loads(raw_line)["question"]  # the fixture really carries the defect
    report = ds.LoadReport()
    rows = ds.load_source("aime25", FIX / "aime25", report=report)
    assert len(rows) == 3
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["70", "75", "6"]
    q = rows[1]["extra_info"]["question"]
    assert q == "Let $x = \\frac{3}{4}$ and $\\triangle ABC$ be equilateral. Find $100x$."
    assert not any(ord(c) < 32 for r in rows for c in r["prompt"][0]["content"] if c != "\n")
    assert report.repaired == 1
    assert any("repaired" in n for n in report.notes)


def test_aime25_math_ai_layout_one_file_is_accepted_and_repaired():
    # math-ai's copy: one file, columns problem/answer/id, raw \x0c before "rac" and a tab before
    # "riangle" (a JSON "\frac" / "\triangle" whose backslash was not escaped).
    raw = [json.loads(line) for line in (FIX / "aime25_mathai.jsonl").read_text().splitlines()]
    assert set(raw[0]) == {"problem", "answer", "id"}
    assert "\x0crac" in raw[1]["problem"] and "\triangle" in raw[2]["problem"]
    report = ds.LoadReport()
    rows = ds.load_source("aime25", FIX / "aime25_mathai.jsonl", report=report)
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["70", "75", "5", "6"]
    questions = [r["extra_info"]["question"] for r in rows]
    assert questions[1] == "Let $x = \\frac{3}{4}$. Find $100x$."
    assert questions[2].startswith("In $\\triangle ABC$")
    assert questions[3] == "Compute $12 \\cdot \\frac{1}{4} + 3$."
    assert "\\frac{3}{4}" in rows[1]["prompt"][0]["content"]
    assert not any(ord(c) < 32 for r in rows for c in r["prompt"][0]["content"] if c != "\n")
    assert [r["extra_info"]["id"] for r in rows] == ["0", "1", "2", "3"]
    assert (report.read, report.kept, report.repaired) == (4, 4, 3)
    assert "repaired lost backslash escapes in 3 row(s)" in report.notes


@pytest.mark.parametrize(
    "part, answers", [("AIME2025-I.jsonl", ["70", "75"]), ("AIME2025-II.jsonl", ["6"])]
)
def test_aime25_opencompass_one_part_file(part, answers):
    rows = ds.load_source("aime25", FIX / "aime25" / part)
    assert [r["reward_model"]["ground_truth"] for r in rows] == answers


def test_aime25_without_a_question_column_names_both_layouts(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "x?", "answer": "1"}) + "\n")
    with pytest.raises(DataError, match=r"missing column\(s\) 'question' \(or 'problem'\)"):
        ds.load_source("aime25", tmp_path / "a.jsonl")


@pytest.mark.parametrize(
    "path, question_field, n",
    [
        (FIX / "aime25_mathai.jsonl", "problem", 3),
        (FIX / "aime25" / "AIME2025-I.jsonl", "question", 1),
    ],
)
def test_file_source_repairs_control_characters_like_the_benchmarks(path, question_field, n):
    report = ds.LoadReport()
    rows = ds.load_file(path, question_field=question_field, report=report)
    prompts = "".join(r["prompt"][0]["content"] for r in rows)
    assert "\\frac" in prompts and "\\triangle" in prompts
    assert "\x0c" not in prompts and "\t" not in prompts
    assert report.repaired == n and f"repaired lost backslash escapes in {n} row(s)" in report.notes


def test_file_source_rejects_unrepairable_control_characters(tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text(json.dumps({"question": "ok", "answer": "1"}) + "\n")
    p.write_text(p.read_text() + json.dumps({"question": "a\x01b", "answer": "2"}) + "\n")
    with pytest.raises(DataError, match="qa.jsonl row 1: control character"):
        ds.load_file(p)


def test_file_source_of_another_domain_keeps_tabs_and_newlines(tmp_path):
    # Code is not LaTeX: a tab-indented line or a line starting "i = " is not a lost escape.
    code = "for i in range(3):\n\tif i:\n\t\tprint(i)\ni = 5\nprint(i)"
    p = tmp_path / "code.jsonl"
    p.write_text(json.dumps({"question": code, "answer": "1\n2\n5"}) + "\n")
    report = ds.LoadReport()
    rows = ds.load_file(p, domain="code", instruction="", report=report)
    assert rows[0]["prompt"][0]["content"] == code and report.repaired == 0


def test_toy_package_does_not_import_datasets():
    # load_benchmark("toy") (pipelines.benchmarks) imports the toy package; the toy package must not import
    # datasets back (the rows both build come from tcopd.runtime.data.rows).
    import ast

    import tcopd.runtime.data.rows as rows_module
    import tcopd.runtime.toy as toy

    files = [*Path(toy.__file__).parent.glob("*.py"), Path(rows_module.__file__)]
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert "tcopd.runtime.data.datasets" not in names, (
                f"{f.name} imports tcopd.runtime.data.datasets"
            )
    assert ds.make_row is rows_module.make_row


@pytest.mark.parametrize(
    "raw, fixed",
    [
        ("\x0crac{1}{2}", "\\frac{1}{2}"),
        ("a\times b", "a\\times b"),
        ("\x08inom{5}{2}", "\\binom{5}{2}"),
        ("\right)", "\\right)"),
        ("\x07lpha", "\\alpha"),
        ("\x0bec{v}", "\\vec{v}"),
        ("x \neq y", "x \\neq y"),
        ("line one\nline two", "line one\nline two"),  # a real newline stays
        ("a\t3", "a\t3"),  # a tab before a non-letter is whitespace, not a lost escape
        ("plain", "plain"),
    ],
)
def test_repair_control_chars(raw, fixed):
    out, changed = ds.repair_control_chars(raw, "row 0")
    assert out == fixed and changed == (raw != fixed)


@pytest.mark.parametrize("raw", ["x\x0c 1", "a\x01b", "\x07 bell", "end\x0b"])
def test_unrepairable_control_chars_are_rejected(raw, tmp_path):
    with pytest.raises(DataError, match="control character"):
        ds.repair_control_chars(raw, "row 0")
    path = tmp_path / "AIME2025-I.jsonl"
    path.write_text(
        json.dumps({"question": "ok", "answer": "1"})
        + "\n"
        + json.dumps({"question": raw, "answer": "2"})
        + "\n"
    )
    with pytest.raises(DataError, match="row 1: control character"):
        ds.load_source("aime25", tmp_path)


def test_math500():
    rows = ds.load_source("math500", FIX / "math500.jsonl")
    assert rows[0]["reward_model"]["ground_truth"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert (
        rows[0]["extra_info"]["subject"] == "Precalculus" and rows[0]["extra_info"]["level"] == "2"
    )
    assert all(r["extra_info"]["split"] == "test" for r in rows)


def test_missing_columns_named_with_the_columns_that_exist():
    with pytest.raises(DataError) as e:
        ds.load_source("deepmath", FIX / "math500.jsonl")
    msg = str(e.value)
    assert "'question'" in msg and "'final_answer'" in msg and "'difficulty'" in msg
    assert "problem, solution, answer, subject, level, unique_id" in msg


def test_non_scalar_answer_reported_with_row_index(tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text(
        "\n".join(json.dumps(r) for r in [{"q": "a?", "a": 1}, {"q": "b?", "a": [1, 2]}]) + "\n"
    )
    with pytest.raises(
        DataError, match=r"row 1: the answer must be a string or a number, got list"
    ):
        ds.load_file(p, question_field="q", answer_field="a")
    p.write_text(json.dumps({"q": "a?", "a": True}) + "\n")
    with pytest.raises(DataError, match="row 0.*got bool"):
        ds.load_file(p, question_field="q", answer_field="a")


def test_file_source_csv_and_domain(tmp_path):
    p = tmp_path / "code.csv"
    p.write_text("task,out\nWhat prints?,7\nAnother?,2.5\n")
    rows = ds.load_file(p, question_field="task", answer_field="out", domain="code", instruction="")
    assert [r["prompt"][0]["content"] for r in rows] == ["What prints?", "Another?"]
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["7", "2.5"]
    assert all(r["domain"] == "code" and r["ability"] == "code" for r in rows)


@pytest.mark.parametrize("name", ["deepmath", "aime25"])
def test_hub_unreachable_is_one_line_naming_from(name):
    with pytest.raises(DataError) as e:
        ds.load_source(name)
    msg = str(e.value)
    assert "\n" not in msg and "--from" in msg and ds.HUB[name].hub_id in msg


def test_load_prepared_validates_and_names_the_row(tmp_path):
    from tcopd.runtime.data.io import write_jsonl, write_parquet

    rows = ds.load_source("math500", FIX / "math500.jsonl")
    write_parquet(tmp_path / "m.parquet", rows)
    back = ds.load_prepared(tmp_path / "m.parquet")
    assert [r["reward_model"]["ground_truth"] for r in back] == [
        r["reward_model"]["ground_truth"] for r in rows
    ]
    assert back[0]["prompt"] == rows[0]["prompt"]
    broken = [dict(rows[0]), {k: v for k, v in rows[1].items() if k not in ("domain", "ability")}]
    write_jsonl(tmp_path / "b.jsonl", broken)
    with pytest.raises(DataError, match=r"b.jsonl row 2: missing field\(s\) 'ability', 'domain'"):
        ds.load_prepared(tmp_path / "b.jsonl")
    write_jsonl(tmp_path / "e.jsonl", [])
    with pytest.raises(DataError, match="no rows"):
        ds.load_prepared(tmp_path / "e.jsonl")


def test_load_benchmark_from_hub_layout_and_prepared_file(tmp_path):
    from tcopd.runtime.data.io import write_parquet

    rows = load_benchmark("aime25", FIX / "aime25")
    assert len(rows) == 3
    write_parquet(tmp_path / "aime25.parquet", rows)
    assert load_benchmark("aime25", tmp_path / "aime25.parquet") == ds.load_prepared(
        tmp_path / "aime25.parquet"
    )
    with pytest.raises(DataError, match="unknown benchmark"):
        load_benchmark("gsm8k")
    with pytest.raises(DataError, match="--from"):
        load_benchmark("math500")

"""`tcopd prepare` end to end through the CLI (local fixtures; nothing touches the Hub)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FIX = Path(__file__).parent / "fixtures"


pytestmark = pytest.mark.usefixtures("offline_hub")  # tests/conftest.py


def _cli(args, capsys):
    from tcopd.cli.main import main

    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_prepare_aime25_from_local_copy(tmp_path, capsys):
    from tcopd.runtime.data.datasets import load_prepared

    code, out, err = _cli(
        ["prepare", "aime25", "--from", str(FIX / "aime25"), "--out", str(tmp_path)], capsys
    )
    assert code == 0, err
    assert "3 rows" in out and "repaired" in out
    rows = load_prepared(tmp_path / "aime25.parquet")
    assert rows == load_prepared(tmp_path / "aime25.jsonl")
    assert "\\frac{3}{4}" in rows[1]["prompt"][0]["content"]


def test_prepare_aime25_from_math_ai_copy_repairs_and_reports(tmp_path, capsys):
    from tcopd.runtime.data.datasets import load_prepared

    code, out, err = _cli(
        ["prepare", "aime25", "--from", str(FIX / "aime25_mathai.jsonl"), "--out", str(tmp_path)],
        capsys,
    )
    assert code == 0, err
    assert "4 rows from aime25" in out and "repaired lost backslash escapes in 3 row(s)" in out
    prompts = [r["prompt"][0]["content"] for r in load_prepared(tmp_path / "aime25.parquet")]
    assert "\\frac{3}{4}" in prompts[1] and "\\triangle ABC" in prompts[2]
    assert not any(c in p for p in prompts for c in "\x0c\t")


@pytest.mark.parametrize(
    "path, extra, n",
    [
        (FIX / "aime25_mathai.jsonl", ["--question-field", "problem"], 3),
        (FIX / "aime25" / "AIME2025-I.jsonl", [], 1),
    ],
)
def test_prepare_file_repairs_control_characters_and_reports(tmp_path, capsys, path, extra, n):
    code, out, err = _cli(["prepare", "file", str(path), "--out", str(tmp_path), *extra], capsys)
    assert code == 0, err
    assert f"repaired lost backslash escapes in {n} row(s)" in out
    rows = [json.loads(line) for line in (tmp_path / f"{path.stem}.jsonl").read_text().splitlines()]
    prompts = "".join(r["prompt"][0]["content"] for r in rows)
    assert "\\frac" in prompts and "\\triangle" in prompts
    assert "\x0c" not in prompts and "\t" not in prompts


def test_prepare_pipeline_returns_the_repaired_count(tmp_path):
    from tcopd.pipelines.prepare import PrepareConfig, run

    cfg = PrepareConfig(
        source="file",
        path=str(FIX / "aime25_mathai.jsonl"),
        question_field="problem",
        out=str(tmp_path),
    )
    result = run(cfg)
    assert (result.rows, result.read, result.repaired) == (4, 4, 3)
    assert "repaired lost backslash escapes in 3 row(s)" in result.notes


def test_prepare_deepmath_reports_survivors(tmp_path, capsys):
    code, out, err = _cli(
        [
            "prepare",
            "deepmath",
            "--from",
            str(FIX / "deepmath.jsonl"),
            "--out",
            str(tmp_path),
            "--min-difficulty",
            "7",
        ],
        capsys,
    )
    assert code == 0, err
    assert "2 of 6 rows have difficulty >= 7" in out
    lines = (tmp_path / "deepmath.jsonl").read_text().splitlines()
    assert len(lines) == 2


def test_prepare_file_with_plain_template(tmp_path, capsys):
    src = tmp_path / "mine.jsonl"
    src.write_text(json.dumps({"q": "What is 1+1?", "a": 2}) + "\n")
    out_dir = tmp_path / "out"
    code, out, err = _cli(
        [
            "prepare",
            "file",
            str(src),
            "--question-field",
            "q",
            "--answer-field",
            "a",
            "--domain",
            "code",
            "--out",
            str(out_dir),
            "--template",
            "plain",
        ],
        capsys,
    )
    assert code == 0, err
    row = json.loads((out_dir / "mine.jsonl").read_text())
    assert row["domain"] == "code" and row["reward_model"]["ground_truth"] == "2"
    assert row["extra_info"]["prompt_text"].startswith(
        "Question: What is 1+1?\nPlease reason step by step"
    )
    assert row["extra_info"]["prompt_text"].endswith("\nAnswer:")


def test_prepare_errors_are_one_line(tmp_path, capsys):
    code, _, err = _cli(["prepare", "math500", "--out", str(tmp_path)], capsys)
    assert code == 1 and "--from" in err and err.count("\n") == 1
    code, _, err = _cli(
        [
            "prepare",
            "deepmath",
            "--from",
            str(FIX / "deepmath.jsonl"),
            "--out",
            str(tmp_path),
            "--min-difficulty",
            "10",
        ],
        capsys,
    )
    assert code == 1 and "no rows left after filtering" in err
    assert not (tmp_path / "deepmath.parquet").exists()
    code, _, err = _cli(
        ["prepare", "file", str(FIX / "math500.jsonl"), "--out", str(tmp_path)], capsys
    )
    assert code == 1 and "missing column(s) 'question'" in err and "problem, solution" in err
    code, _, err = _cli(["prepare", "gsm8k", "--out", str(tmp_path)], capsys)
    assert code == 1 and "unknown dataset" in err
    code, _, err = _cli(
        [
            "prepare",
            "file",
            str(FIX / "aime24.jsonl"),
            "--out",
            str(tmp_path),
            "--question-field",
            "problem",
            "--template",
            "chat",
        ],
        capsys,
    )
    assert code == 1 and "--tokenizer" in err

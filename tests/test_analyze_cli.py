"""``tcopd analyze`` end to end through the CLI: tables on stdout and in files, the plot, errors."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest
from test_analyze import (
    A_ROWS,
    B_ROWS,
    COST_TCOPD,
    TEACHERS,
    acc_rows,
    assert_png,
    write_run,
    write_samples,
)

from tcopd.cli.main import main


def cli(capsys, *argv):
    """Run ``tcopd *argv`` in-process; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    out = capsys.readouterr()
    return e.value.code or 0, out.out, out.err


@pytest.fixture
def files(tmp_path):
    a = write_samples(tmp_path / "anti_expert" / "samples.jsonl", A_ROWS)
    b = write_samples(tmp_path / "tcopd" / "samples.jsonl", B_ROWS)
    return str(a), str(b)


def test_length_table_csv_json(capsys, files, tmp_path):
    code, out, _ = cli(capsys, "analyze", "length", *files)
    assert code == 0
    line = next(x for x in out.splitlines() if "p90 tokens" in x)
    assert "76.0" in line and "7.9" in line
    code, out, _ = cli(capsys, "analyze", "length", *files, "--format", "csv")
    rows = {r[0]: r[1:] for r in csv.reader(io.StringIO(out))}
    assert rows["statistic"] == ["anti_expert", "tcopd"]
    assert [float(x) for x in rows["mean tokens"]] == [40.0, 7.5]
    assert rows["mean tokens (incorrect)"] == ["60.0", ""]
    target = tmp_path / "out" / "table3.json"
    code, out, err = cli(
        capsys,
        "analyze",
        "length",
        *files,
        "--name",
        "Anti",
        "--name",
        "TC",
        "--output",
        str(target),
    )
    assert code == 0 and out == "" and f"wrote {target}" in err
    obj = json.loads(target.read_text())  # format inferred from the suffix
    rec = {r["statistic"]: r for r in obj["rows"]}
    assert rec["no-box fraction"] == {"statistic": "no-box fraction", "Anti": 0.6, "TC": 0.0}


def test_phrases_cli(capsys, files, tmp_path):
    target = tmp_path / "p.csv"
    code, _, _ = cli(
        capsys,
        "analyze",
        "phrases",
        files[0],
        "--phrase",
        "boxed",
        "--format",
        "csv",
        "--output",
        str(target),
    )
    assert code == 0
    rows = {r[0]: r[1:] for r in csv.reader(io.StringIO(target.read_text()))}
    # "boxed" after a backslash: 5 responses hold \boxed 5 times in all (one holds two); 200 tokens
    assert float(rows["boxed"][0]) == pytest.approx(5 / 200 * 1000)
    assert list(rows)[:7] == [
        "phrase",
        "(total tokens)",
        "let's",
        "we should",
        "step 1",
        "wait",
        "define",
    ]
    text = tmp_path / "p.txt"
    code, _, _ = cli(capsys, "analyze", "phrases", *files, "--output", str(text))
    assert text.read_text().splitlines()[0] == "Phrase rates per 1,000 tokens"


def test_curves_cli(capsys, tmp_path):
    a = write_run(tmp_path / "gopd", acc_rows([0.1, 0.3, 0.5, 0.6]))
    b = write_run(tmp_path / "tcopd", acc_rows([0.2, 0.6, 0.55, 0.8]))
    png = tmp_path / "fig2.png"
    code, out, err = cli(
        capsys, "analyze", "curves", str(a), str(b), "--out", str(png), "--format", "json"
    )
    assert code == 0 and "fig2.svg" in err
    assert_png(png)
    rec = {r["statistic"]: r for r in json.loads(out)["rows"]}
    assert rec["first step ≥ target"] == {"statistic": "first step ≥ target", "gopd": 4, "tcopd": 2}
    code, out, _ = cli(
        capsys,
        "analyze",
        "curves",
        str(a),
        str(b),
        "--out",
        str(png),
        "--smooth",
        "2",
        "--target",
        "0.5",
    )
    assert "gopd: reaches 0.5 at step 4" in out and "tcopd: reaches 0.5 at step 3" in out


def test_cost_cli(capsys, tmp_path):
    a = write_run(tmp_path / "tcopd", COST_TCOPD, {"teachers": TEACHERS, "world_size": 4})
    code, out, _ = cli(capsys, "analyze", "cost", str(a), "--format", "json")
    rec = {r["statistic"]: r["tcopd"] for r in json.loads(out)["rows"]}
    assert rec["device hours"] == pytest.approx(4 * 60 / 3600) and rec[
        "rollout %"
    ] == pytest.approx(50.0)
    assert rec["peak mem cuda:0 (GB)"] == 15.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["length", "{tmp}/none.jsonl"], "error: samples file '{tmp}/none.jsonl' does not exist"),
        (
            ["length", "{tmp}/bad/samples.jsonl"],
            "error: {tmp}/bad/samples.jsonl:2: missing field 'correct'",
        ),
        (
            ["phrases", "{tmp}/empty/samples.jsonl"],
            "error: samples file '{tmp}/empty/samples.jsonl' is empty",
        ),
        (
            ["curves", "{tmp}/run", "--metric", "acc"],
            "error: unknown metric 'acc'; the runs log: loss, rollout_accuracy",
        ),
        (["cost", "{tmp}/gone"], "error: run directory '{tmp}/gone' does not exist"),
        (["length", "{tmp}/bad/samples.jsonl", "--format", "xml"], "error: unknown --format 'xml'"),
    ],
)
def test_bad_input_is_one_error_line(capsys, tmp_path, args, message):
    write_samples(
        tmp_path / "bad" / "samples.jsonl",
        [A_ROWS[0], {"response": "x", "num_tokens": 1, "finish_reason": "stop"}],
    )
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "samples.jsonl").write_text("")
    write_run(tmp_path / "run", acc_rows([0.5]))
    argv = [a.format(tmp=tmp_path) for a in args]
    code, out, err = cli(capsys, "analyze", *argv)
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message.format(tmp=tmp_path)), err


def test_real_process_error_and_help(tmp_path):
    env = {**os.environ, "COLUMNS": "200"}
    cmd = [
        sys.executable,
        "-c",
        "from tcopd.cli.main import main; main()",
        "analyze",
        "length",
        str(tmp_path / "x.jsonl"),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 1 and p.stdout == ""
    assert (
        p.stderr.strip()
        == f"error: samples file '{tmp_path / 'x.jsonl'}' does not exist; pass the samples.jsonl that `tcopd eval` wrote"
    )
    p = subprocess.run(cmd[:4] + ["--help"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0
    assert all(name in p.stdout for name in ("length", "phrases", "curves", "cost"))


def test_a_sweep_directory_through_the_cli(capsys, tmp_path):
    from test_analyze import sample, step_rows, write_sweep

    sweep = write_sweep(
        tmp_path / "sw",
        {
            ("lambdas=1", 0): ("done", step_rows([0.1, 0.3], 36), [sample(10, True)]),
            ("lambdas=1", 1): ("done", step_rows([0.2], 36), [sample(30, False)]),
        },
    )
    code, out, _ = cli(capsys, "analyze", "length", str(sweep), "--format", "csv")
    rows = {r[0]: r[1:] for r in csv.reader(io.StringIO(out))}
    assert code == 0 and rows["statistic"] == ["lambdas=1", "lambdas=1.5,-0.5"]
    assert rows["mean tokens"] == ["20.0", ""] and rows["samples"] == ["2", "0"]
    code, out, err = cli(
        capsys,
        "analyze",
        "curves",
        str(sweep),
        "--out",
        str(tmp_path / "c.png"),
        "--format",
        "json",
    )
    assert code == 0, err
    obj = json.loads(out)
    assert obj["columns"] == ["lambdas=1 seed0", "lambdas=1 seed1"]
    assert {r["statistic"]: r for r in obj["rows"]}["final value"]["lambdas=1 seed0"] == 0.3
    code, _, err = cli(capsys, "analyze", "cost", str(sweep), "--name", "only-one")
    assert code == 1 and "got 1 --name for 2 columns" in err

"""A shortened `tcopd demo` on the small toy world: every artefact is produced and consistent;
with ``--seeds 2`` the trainings go through ``tcopd sweep`` and Table 1 carries intervals."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from sweep_inprocess import runs_in_process

from tcopd.cli.main import main
from tcopd.errors import ConfigError
from tcopd.pipelines import demo
from tcopd.pipelines.analyze import cost

METHODS = ("OPD", "G-OPD", "TC-OPD(1.5,-0.5)", "TC-OPD(1.5,-1.5)")
SETTINGS = ("lambdas=1,0", "lambdas=1.5,0", "lambdas=1.5,-0.5", "lambdas=1.5,-1.5")
T_975_1 = 12.706204736  # t_{0.975, 1}: the 95 % interval of a mean over two seeds


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    """One small toy world for both demos (built by the first)."""
    return tmp_path_factory.mktemp("toy") / "world"


def run_demo(out: Path, toy_dir: Path, *extra: str) -> None:
    args = ["demo", "--small", "--out", str(out), "--toy-dir", str(toy_dir), *extra]
    try:
        main(args)
    except SystemExit as e:
        assert e.code in (0, None)


@pytest.mark.slow
def test_small_demo_end_to_end(tmp_path, toy_dir, capsys):
    out = tmp_path / "demo"
    run_demo(out, toy_dir, "--eval-limit", "8")
    text = capsys.readouterr().out
    for name in METHODS:
        rows = [
            json.loads(x) for x in (out / "train" / name / "metrics.jsonl").read_text().splitlines()
        ]
        assert [r["step"] for r in rows] == [1, 2]
        assert (out / "eval" / name / "summary.json").is_file()
    for name in ("student", "expert", "anti-expert"):
        assert json.loads((out / "eval" / name / "summary.json").read_text())["n"] == 1
    png = out / "figure2_rollout_accuracy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table1 = json.loads((out / "table1_accuracy.json").read_text())
    summary = json.loads((out / "demo_summary.json").read_text())
    # Table 1's numbers are the eval summaries' numbers
    for name, (mean, se) in summary["accuracy"].items():
        s = json.loads((out / "eval" / name / "summary.json").read_text())
        assert mean == pytest.approx(s["mean_at_n"]) and se == pytest.approx(s["stderr"])
    assert "Table 1" in text and "report.md" in text
    assert table1
    assert [r["model"] for r in table1["rows"]] == [
        "mean@n %",
        "± stderr",
        "Δ vs student",
        "problems",
    ]
    assert not (out / "sweep").exists() and "intervals" not in summary  # one seed: no sweep
    # the cost table counts one teacher for OPD/G-OPD and two for TC-OPD
    cost_csv = (out / "table2_cost.csv").read_text()
    assert "# teachers" in cost_csv


def test_seeds_make_a_sweep_config():
    world = SimpleNamespace(
        student=Path("/w/student"),
        expert=Path("/w/expert"),
        anti_expert=Path("/w/anti"),
        train_files={"math": Path("/w/train.parquet")},
        test_files={"math": Path("/w/test.parquet")},
    )
    cfg = demo.DemoConfig(out="o", seed=3, seeds=2, small=True, eval_n=2, eval_limit=5)
    s = demo._sweep_config(cfg, world, Path("o"))
    assert s.out == "o/sweep" and s.seed_list == [3, 4]  # seeds offset by --seed
    assert s.lambdas == ["1,0", "1.5,0", "1.5,-0.5", "1.5,-1.5"]
    assert s.train == {
        "toy": True,
        "student": "/w/student",
        "expert": "/w/expert",
        "anti_expert": "/w/anti",  # every run's teacher; λ = 0 for OPD and G-OPD
        "data": "/w/train.parquet",
        "steps": 2,
        "batch_size": 4,
        "samples_per_prompt": 2,
        "max_response_tokens": 24,
        "save_every": 0,
    }
    assert (s.eval_data, s.eval_n, s.eval_limit, s.eval_seed) == ("/w/test.parquet", 2, 5, 3)
    assert (s.eval_max_tokens, s.eval_options) == (24, {"template": "plain"})
    with pytest.raises(ConfigError, match="--seeds must be at least 1"):
        demo.DemoConfig(seeds=0)


@pytest.mark.slow
def test_small_demo_with_two_seeds_goes_through_the_sweep(tmp_path, toy_dir, capsys):
    """The sweep's eight runs execute in this process (tests/sweep_inprocess.py): this test
    checks what the demo makes of a sweep; tests/test_sweep.py runs sweeps' real subprocesses."""
    out = tmp_path / "demo"
    with runs_in_process():
        run_demo(out, toy_dir, "--seeds", "2", "--eval-limit", "4")
    text = capsys.readouterr().out
    rep = json.loads((out / "sweep" / "sweep.json").read_text())
    assert rep["settings"] == list(SETTINGS) and rep["seeds"] == [0, 1]
    assert {r["status"] for r in rep["runs"]} == {"done"} and len(rep["runs"]) == 8
    table1 = json.loads((out / "table1_accuracy.json").read_text())
    rows = {r["model"]: r for r in table1["rows"]}
    assert list(rows) == [
        "mean@n %",
        "± stderr",
        "95% CI low",
        "95% CI high",
        "seeds",
        "Δ vs student",
        "problems",
    ]
    student = json.loads((out / "eval" / "student" / "summary.json").read_text())
    assert rows["mean@n %"]["student"] == pytest.approx(student["mean_at_n"])
    assert rows["95% CI low"]["student"] is None and rows["seeds"]["student"] is None
    for method, setting in zip(METHODS, SETTINGS, strict=True):
        # by hand: each seed's mean@n is its evaluation's summary; mean ± t · s / √2 over 2 seeds
        m = [
            json.loads(
                (
                    out / "sweep" / "runs" / setting / f"seed{k}" / "eval" / "summary.json"
                ).read_text()
            )["mean_at_n"]
            for k in (0, 1)
        ]
        mean, half = (m[0] + m[1]) / 2, T_975_1 * abs(m[0] - m[1]) / math.sqrt(2) / math.sqrt(2)
        assert rows["mean@n %"][method] == pytest.approx(mean)
        assert rows["95% CI low"][method] == pytest.approx(mean - half, abs=1e-9)
        assert rows["95% CI high"][method] == pytest.approx(mean + half, abs=1e-9)
        assert rows["seeds"][method] == 2 and rows["problems"][method] == 4
        assert rows["± stderr"][method] is None
        assert rows["Δ vs student"][method] == pytest.approx(mean - student["mean_at_n"])
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["failed"] == []
    assert summary["intervals"]["OPD"] == [rows["95% CI low"]["OPD"], rows["95% CI high"]["OPD"]]
    # the notes are the sweep's claims, in the methods' names
    assert summary["notes"] == [
        line.replace("lambdas=1.5,-1.5", "TC-OPD(1.5,-1.5)")
        .replace("lambdas=1.5,-0.5", "TC-OPD(1.5,-0.5)")
        .replace("lambdas=1.5,0", "G-OPD")
        .replace("lambdas=1,0", "OPD")
        for line in rep["claims"]
    ]
    assert any(
        "G-OPD vs OPD" in n or "G-OPD > OPD" in n or "G-OPD < OPD" in n for n in summary["notes"]
    )
    report = (out / "report.md").read_text()
    assert "95% CI low" in report and "mean over seeds ± 1 standard error" in report
    assert "95% CI" in text and re.search(
        r"TC-OPD\(1.5,-1.5\) (vs|>|<) OPD", " ".join(text.split())
    )
    # Figure 2 is the sweep's curves; Table 3 pools each method's two seeds (2 × 4 problems × 1)
    assert (out / "figure2_rollout_accuracy.png").read_bytes() == (
        out / "sweep" / "curves.png"
    ).read_bytes()
    table3 = json.loads((out / "table3_length.json").read_text())
    samples = next(r for r in table3["rows"] if r["statistic"] == "samples")
    assert [samples[n] for n in ("student", *METHODS)] == [4, 8, 8, 8, 8]
    table2 = json.loads((out / "table2_cost.json").read_text())
    assert table2["columns"] == list(METHODS)
    # tcopd analyze reads the demo's sweep: one cost column per run
    t = cost.run(cost.CostConfig(runs=[str(out / "sweep")])).table
    assert t.columns[:2] == ("lambdas=1,0 seed0", "lambdas=1.5,0 seed0") and len(t.columns) == 8

    # a second run reuses every finished run: nothing is trained or evaluated again
    state = (out / "sweep" / "sweep_state.json").read_text()
    run_demo(out, toy_dir, "--seeds", "2", "--eval-limit", "4")
    assert (out / "sweep" / "sweep_state.json").read_text() == state
    for setting in SETTINGS:
        for k in (0, 1):
            run = out / "sweep" / "runs" / setting / f"seed{k}"
            assert (run / "train.log").read_text().count("$ tcopd train") == 1
            assert (run / "eval.log").read_text().count("$ tcopd eval") == 1
    assert json.loads((out / "table1_accuracy.json").read_text()) == table1


def test_the_reading_of_table_1_at_one_seed():
    """2·SE of a difference decides each method vs the student; one seed orders no methods."""
    from tcopd.pipelines.demo import _notes

    acc = {"student": (20.0, 2.0), "OPD": (60.0, 3.0), "G-OPD": (64.0, 3.0)}
    acc |= {"TC-OPD(1.5,-0.5)": (62.0, 3.0), "TC-OPD(1.5,-1.5)": (78.0, 3.0)}
    notes = _notes(acc)
    assert notes[0].startswith("OPD beats the student (60.0 vs 20.0")
    assert notes[-1].startswith("One seed orders none of the distilled methods (here 60.0–78.0 %)")
    acc["student"] = (57.0, 2.0)  # 2·SE of the difference = 7.2 > 60 − 57
    assert _notes(acc)[0].startswith("OPD does not clearly beat the student")
    assert len(_notes(acc)) == 5

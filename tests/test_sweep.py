"""``tcopd sweep``: the grid, the statistics from run files, bad input, an end-to-end tiny sweep,
and a sweep killed during its second run that, restarted, writes the same sweep.json."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sweep_inprocess import runs_in_process
from train_fixtures import make_world, write_prepared

from tcopd.cli.main import main
from tcopd.errors import ConfigError
from tcopd.pipelines.sweep import figures, report
from tcopd.pipelines.sweep.config import SweepConfig, expand_grid, find_baseline
from tcopd.pipelines.sweep.runner import plan_runs
from tcopd.runtime.evaluation import stats

REPO = Path(__file__).resolve().parents[1]


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------------------------- the grid


def test_grid_names_directories_and_order():
    cfg = SweepConfig(out="o", lambdas=["1", "1.50, -0.5"], grid={"lr": [0.001, 1e-06]})
    settings = expand_grid(cfg)
    assert [s.name for s in settings] == [
        "lambdas=1 lr=0.001",
        "lambdas=1 lr=1e-06",
        "lambdas=1.5,-0.5 lr=0.001",
        "lambdas=1.5,-0.5 lr=1e-06",
    ]
    assert settings[2].dirname == "lambdas=1.5,-0.5__lr=0.001"
    assert settings[2].values == {"lambdas": "1.5,-0.5", "lr": 0.001}
    # seed-major: every setting with seed 0 first
    runs = plan_runs(Path("o"), settings[:2], [0, 1])
    assert [(r.setting.name, r.seed) for r in runs] == [
        ("lambdas=1 lr=0.001", 0),
        ("lambdas=1 lr=1e-06", 0),
        ("lambdas=1 lr=0.001", 1),
        ("lambdas=1 lr=1e-06", 1),
    ]
    assert runs[1].dir == Path("o/runs/lambdas=1__lr=1e-06/seed0")
    one_axis = expand_grid(SweepConfig(out="o", lambdas=["1", "1.5,-0.5"]))
    assert find_baseline(one_axis, None).name == "lambdas=1"
    assert find_baseline(one_axis, "1.5,-0.50").name == "lambdas=1.5,-0.5"
    assert find_baseline(one_axis, "lambdas=1.5,-0.5").name == "lambdas=1.5,-0.5"
    assert [s.name for s in expand_grid(SweepConfig(out="o"))] == ["base"]


def test_named_settings_keep_their_names_order_and_values():
    table = {"math": {"math": 1.5, "code": -0.5}, "code": {"math": -0.5, "code": 1.5}}
    cfg = SweepConfig(
        out="o",
        settings={
            "routed G-OPD": {"lambda_table": {"math": {"math": 1.5}, "code": {"code": 1.5}}},
            "TC-OPD −0.5": {"lambda_table": table, "lambdas": "1.50, -0.5"},
            "math-only": {"data": "m.jsonl", "teacher": ["math=/m:1"]},
        },
        train={"lr": 0.001, "data": "mixed.jsonl"},
    )
    settings = expand_grid(cfg)
    assert [s.name for s in settings] == ["routed G-OPD", "TC-OPD −0.5", "math-only"]
    assert [s.dirname for s in settings] == ["routed__G-OPD", "TC-OPD___0.5", "math-only"]
    assert settings[1].values == {"lambda_table": table, "lambdas": "1.5,-0.5"}
    assert find_baseline(settings, None).name == "routed G-OPD"
    assert find_baseline(settings, "math-only") is settings[2]


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"lambdas": ["1.5", "1.50"]}, "the same setting twice"),
        ({"lambdas": ["1.5,x"]}, "setting lambdas=1.5,x"),
        ({"grid": {"seed": [0, 1]}}, "use seeds"),
        ({"grid": {"lrr": [0.1]}}, "'lrr' is not a train setting"),
        ({"grid": {"lr": []}}, "non-empty list"),
        ({"lambdas": ["1"], "grid": {"lambdas": ["2"]}}, "given twice"),
        ({"grid": {"lr": [0.1]}, "train": {"lr": 0.2}}, "both a grid axis and a base"),
        ({"settings": {"a": {"lr": 0.1}}, "lambdas": ["1"]}, "named settings or a grid"),
        ({"settings": {"a": {"seed": 1}}}, "set by the sweep"),
        ({"settings": {"a": {"lrr": 1}}}, "setting 'a': 'lrr' is not a train setting"),
        ({"settings": {"a": [1]}}, "must map train settings"),
        ({"settings": {"a": {"lambdas": "1,x"}}}, "setting 'a'"),
    ],
)
def test_bad_grids(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        expand_grid(SweepConfig(out="o", **kwargs))


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"seeds": "0,x"}, "comma-separated integers"),
        ({"seeds": "1,1"}, "distinct"),
        ({"target": 60.0}, "in \\[0, 1\\]"),
        ({"bootstrap": 10}, "at least 100"),
    ],
)
def test_bad_sweep_settings(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        SweepConfig(out="o", **kwargs)


def test_one_run_per_device_at_a_time(tmp_path, monkeypatch):
    import threading

    from tcopd.pipelines.sweep import runner

    settings = expand_grid(SweepConfig(out="o", lambdas=["1", "1.5", "2"]))
    runs = plan_runs(tmp_path, settings, [0, 1])
    state = runner.State(tmp_path / "state.json")
    state.update(runs[0].key, status="done")  # finished: skipped
    busy: dict[str | None, str] = {}
    seen: list[tuple[str, str | None]] = []
    lock = threading.Lock()

    def fake_execute(run, device, ctx):
        with lock:
            assert device not in busy, f"{device} already runs {busy[device]}"
            busy[device] = run.key
            seen.append((run.key, device))
        time.sleep(0.05)
        with lock:
            del busy[device]
        ctx.state.update(run.key, status="failed" if run.seed else "done", error="error: x")
        return "failed" if run.seed else "done"

    monkeypatch.setattr(runner, "execute", fake_execute)
    events = []
    ctx = runner.RunContext(state, {}, {}, events.append)  # fake_execute reads neither
    runner.run_all(runs, ["0", "1"], ctx)
    assert sorted(k for k, _ in seen) == sorted(r.key for r in runs[1:])
    assert {d for _, d in seen} == {"0", "1"}  # both devices worked
    sweep_events = [(e.done, e.total) for e in events if e.phase == "sweep"]
    assert sweep_events[0] == (1, 6) and sweep_events[-1] == (6, 6)
    assert sum(e.phase == "warning" for e in events) == 3  # the seed-1 runs failed
    assert runner.device_slots("2,3", None) == ["2", "3"]
    assert runner.device_slots(None, "cpu") == [None]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert runner.device_slots(None, None) == ["4", "6"]


# ------------------------------------------------------------ statistics from run files


def _fake_run(
    run_dir: Path,
    correct: list[list[bool]],
    tokens: int,
    curve: list[float],
    domains: list[str] | None = None,
) -> None:
    """A finished run's files: eval/samples.jsonl (problems × samples) and train/metrics.jsonl."""
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "train").mkdir(parents=True)
    rows = [
        {
            "problem_id": f"p{p}",
            "sample_index": i,
            "correct": c,
            "num_tokens": tokens + (p if domains else 0),
        }
        | ({"domain": domains[p]} if domains else {})
        for p, cs in enumerate(correct)
        for i, c in enumerate(cs)
    ]
    (run_dir / "eval" / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = [{"step": t + 1, "rollout_accuracy": v} for t, v in enumerate(curve)]
    (run_dir / "train" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))


T, F = True, False


def _synthetic_sweep(tmp_path: Path):
    """A 2 × 2 λ grid, 2 seeds, 4 problems × 2 samples; the fourth setting failed."""
    cfg = SweepConfig(
        out=str(tmp_path),
        lambdas=["1.5,-0.5", "2,-0.5", "1.5,-1.5", "2,-1.5"],
        seeds="0,1",
        smooth=1,
        bootstrap=2000,
    )
    settings = expand_grid(cfg)
    base, better, same, failed = settings
    runs = {(r.setting.name, r.seed): r for r in plan_runs(tmp_path, settings, [0, 1])}
    # baseline: seed 0 accuracies (1, ½, 0, 0) → mean@2 = 37.5 %; seed 1 (1, 0, 0, ½) → 37.5 %
    base_correct = {0: [[T, T], [T, F], [F, F], [F, F]], 1: [[T, T], [F, F], [F, F], [T, F]]}
    for seed in (0, 1):
        _fake_run(runs[base.name, seed].dir, base_correct[seed], 10, [0.1, 0.2, 0.3])
        _fake_run(runs[same.name, seed].dir, base_correct[seed], 20, [0.1, 0.2, 0.3])
    # better: every sample correct → 100 %; its curves are faster (AUC 0.6 and 0.7)
    _fake_run(runs[better.name, 0].dir, [[T, T]] * 4, 30, [0.5, 0.6, 0.7])
    _fake_run(runs[better.name, 1].dir, [[T, T]] * 4, 50, [0.5, 0.7, 0.9])
    results = [
        report.load_result(run, {"status": "done", "train_wall_s": 1.0})
        for (name, _), run in runs.items()
        if name != failed.name
    ]
    results += [report.RunResult(failed.name, s, "failed", error="error: boom") for s in (0, 1)]
    header = {"benchmark": "fake", "eval": {"n": 2}, "seeds": [0, 1]}
    return cfg, settings, results, report.statistics(cfg, settings, base, results, header)


def test_statistics_from_run_files_by_hand(tmp_path):
    cfg, settings, results, rep = _synthetic_sweep(tmp_path)
    base, better, same, failed = (s.name for s in settings)
    b = rep["per_setting"][base]
    assert b["mean_at_n"]["per_seed"] == {"0": 37.5, "1": 37.5}
    assert b["mean_at_n"]["mean"] == 37.5 and b["mean_at_n"]["ci"] == [37.5, 37.5]
    assert b["mean_tokens"]["mean"] == 10.0
    assert b["auc"]["mean"] == pytest.approx(0.2)  # (0.1 + 0.2 + 0.3) / 3
    # the default target is the baseline's final rollout accuracy, mean over seeds: 0.3
    assert rep["target"]["value"] == pytest.approx(0.3)
    assert b["steps_to_target"]["per_seed"] == {"0": 3.0, "1": 3.0}
    g = rep["per_setting"][better]
    # mean tokens 30 and 50: 40 ± t_{0.975,1} · 14.142 / √2 = 40 ± 127.06
    assert g["mean_tokens"]["mean"] == 40.0
    assert g["mean_tokens"]["ci"][1] == pytest.approx(40 + 12.7062047 * 10, abs=1e-4)
    assert g["auc"]["per_seed"] == pytest.approx({"0": 0.6, "1": 0.7})
    assert (
        rep["per_setting"][failed]["seeds"] == []
        and rep["per_setting"][failed]["mean_at_n"]["n"] == 0
    )

    d = rep["differences"][better]
    # paired by seed and problem: D = 100 − 100·a(base) per cell → mean 100 − 37.5 = 62.5
    assert d["mean_at_n"]["diff"] == pytest.approx(62.5)
    assert d["mean_at_n"]["per_seed"] == {"0": 62.5, "1": 62.5}
    assert d["mean_at_n"]["sign_agreement"] == 1.0
    assert (d["mean_at_n"]["n"], d["mean_at_n"]["problems"]) == (2, 4)
    expected = stats.paired_bootstrap(
        [[100.0] * 4] * 2, [[100, 50, 0, 0], [100, 0, 0, 50]], resamples=2000, seed=0
    )
    assert d["mean_at_n"]["ci"] == [expected.low, expected.high]
    # AUC per seed: 0.6 − 0.2 = 0.4 and 0.7 − 0.2 = 0.5 → 0.45 ± 12.706 · 0.0707 / √2
    assert d["auc"]["diff"] == pytest.approx(0.45)
    half = 12.7062047 * math.sqrt(0.005) / math.sqrt(2)
    assert d["auc"]["ci"] == pytest.approx([0.45 - half, 0.45 + half], abs=1e-6)
    # steps to 0.3: 1 against 3 on both seeds
    assert d["steps_to_target"]["diff"] == -2.0 and d["steps_to_target"]["ci"] == [-2.0, -2.0]
    assert rep["differences"][same]["mean_at_n"]["ci"] == [0.0, 0.0]
    assert rep["differences"][failed]["mean_at_n"] is None

    claims = "\n".join(rep["claims"])
    assert f"mean@n: {better} > {base}: +62.50 points" in claims
    assert "sign agrees in 2/2 seeds" in claims
    assert f"rollout-accuracy AUC: {better} vs {base}: no difference shown (95% CI [" in claims
    assert f"steps to target: {better} < {base}: -2.0 steps" in claims
    assert f"mean@n: {same} vs {base}: no difference shown (95% CI [+0.00, +0.00]" in claims
    assert f"mean@n: {failed} vs {base}: no pair of finished seeds" in claims
    assert rep["failed"] == [
        {"setting": failed, "seed": 0, "error": "error: boom"},
        {"setting": failed, "seed": 1, "error": "error: boom"},
    ]


def test_tables_and_figures(tmp_path):
    cfg, settings, results, rep = _synthetic_sweep(tmp_path)
    files = report.write_tables(tmp_path, rep, [0, 1])
    import csv

    rows = list(csv.DictReader(open(tmp_path / "settings.csv")))
    first = rows[0]
    assert (first["setting"], first["statistic"], first["seed0"]) == (
        "lambdas=1.5,-0.5",
        "mean_at_n",
        "37.5",
    )
    diffs = list(csv.DictReader(open(tmp_path / "differences.csv")))
    assert {r["statistic"] for r in diffs} == {"mean_at_n", "auc", "steps_to_target"}
    assert len(list(csv.DictReader(open(tmp_path / "runs.csv")))) == 8
    files += report.write_figures(tmp_path, settings, results, rep, cfg.smooth)
    names = sorted(f.name for f in files)
    for stem in ("curves", "forest", "heatmap"):  # a 2 × 2 λ grid gets the heatmap
        assert f"{stem}.png" in names and f"{stem}.svg" in names
        assert (tmp_path / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    matrix, rows_, cols = figures.lambda_grid(settings, rep)
    assert (rows_, cols) == (["-1.5", "-0.5"], ["1.5", "2"])
    assert matrix[1] == [37.5, 100.0] and matrix[0][0] == 37.5 and math.isnan(matrix[0][1])


# ---------------------------------------------------------------------- runs on tiny models


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    w = make_world(root)
    return w, write_prepared(root / "eval.jsonl", 3)


def _args(world, out: Path, *extra: str) -> list[str]:
    w, eval_file = world
    return [
        "sweep",
        *("--student", str(w.student), "--expert", str(w.expert)),
        *("--anti-expert", str(w.anti_expert), "--data", str(w.data)),
        *("--template", "plain", "--steps", "3", "--batch-size", "2"),
        *("--samples-per-prompt", "2", "--max-response-tokens", "6", "--lr", "1e-3"),
        *("--save-every", "1", "--device", "cpu", "--grader-workers", "1"),
        *("--lambdas", "1.5,0", "--lambdas", "1.5,-0.5", "--seeds", "0,1"),
        *("--eval-data", str(eval_file), "--eval-n", "2", "--eval-max-tokens", "6"),
        *("--out", str(out), *extra),
    ]


def test_an_invalid_setting_is_refused_before_any_run(world, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = _args(world, out)
    args[args.index("1.5,0")] = "1.5"  # one λ for two teachers
    code, _, err = cli(capsys, *args)
    assert code == 1
    assert "error: setting lambdas=1.5: --lambdas has 1 value" in err
    assert not (out / "runs").exists()
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(yaml.safe_dump({"grid": {"temperature": [1.0, 0]}}))
    code, _, err = cli(capsys, *_args(world, out), "--config", str(cfg))
    assert code == 1 and "setting lambdas=1.5,0 temperature=0: temperature must be > 0" in err
    assert not (out / "runs").exists()
    code, _, err = cli(capsys, *_args(world, out, "--eval-n", "0"))
    assert code == 1 and "final evaluation: --n must be at least 1" in err


def _sweep_here(world, out: Path, *extra: str) -> Path:
    """The sweep in this process, its runs too (tests/sweep_inprocess.py): what it computes is
    the subprocess sweep's, without a Python start-up per run."""
    with runs_in_process():
        try:
            main(_args(world, out, *extra))
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
    assert code == 0, (out / "sweep.json").read_text()[-2000:] if code else ""
    return out


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    """An uninterrupted 2 settings × 2 seeds sweep (3 steps each)."""
    t0 = time.monotonic()
    out = _sweep_here(world, tmp_path_factory.mktemp("reference") / "sweep")
    print(f"reference sweep: {time.monotonic() - t0:.0f} s")
    return out


def _without_wall_times(obj):
    if isinstance(obj, dict):
        return {k: _without_wall_times(v) for k, v in obj.items() if not k.endswith("_wall_s")}
    if isinstance(obj, list):
        return [_without_wall_times(v) for v in obj]
    return obj


@pytest.mark.slow
def test_end_to_end_sweep(reference):
    rep = json.loads((reference / "sweep.json").read_text())
    assert rep["settings"] == ["lambdas=1.5,0", "lambdas=1.5,-0.5"]
    assert rep["baseline"] == "lambdas=1.5,0" and rep["seeds"] == [0, 1]
    assert [(r["setting"], r["seed"], r["status"]) for r in rep["runs"]] == [
        ("lambdas=1.5,0", 0, "done"),
        ("lambdas=1.5,-0.5", 0, "done"),
        ("lambdas=1.5,0", 1, "done"),
        ("lambdas=1.5,-0.5", 1, "done"),
    ]
    for r in rep["runs"]:
        run_dir = reference / "runs" / r["setting"] / f"seed{r['seed']}"
        summary = json.loads((run_dir / "eval" / "summary.json").read_text())
        assert r["mean_at_n"] == pytest.approx(summary["mean_at_n"])  # same formula as eval
        assert r["mean_tokens"] == pytest.approx(summary["mean_tokens"])
        assert (r["steps"], r["problems"]) == (3, 3)
        train = yaml.safe_load((run_dir / "train.yaml").read_text())
        assert (train["seed"], train["lambdas"], train["steps"]) == (r["seed"], r["setting"][8:], 3)
        assert (run_dir / "train" / "checkpoints" / "latest").exists()
        evaluation = yaml.safe_load((run_dir / "eval.yaml").read_text())
        assert (evaluation["template"], evaluation["device"]) == ("plain", "cpu")  # as trained
        assert evaluation["models"] == [str(run_dir / "train/checkpoints/step-000003/model")]
    block = rep["per_setting"]["lambdas=1.5,-0.5"]["mean_at_n"]
    assert block["mean"] == pytest.approx(sum(block["per_seed"].values()) / 2)
    assert rep["differences"]["lambdas=1.5,-0.5"]["mean_at_n"]["problems"] == 3
    assert len(rep["claims"]) == 3 and rep["failed"] == []
    for name in (
        "sweep.json",
        "settings.csv",
        "differences.csv",
        "runs.csv",
        "curves.png",
        "forest.svg",
    ):
        assert (reference / name).exists(), name
    state = json.loads((reference / "sweep_state.json").read_text())["runs"]
    assert {v["status"] for v in state.values()} == {"done"}


@pytest.mark.slow
def test_a_restart_with_another_grid_is_refused(world, reference, tmp_path, capsys):
    reference = Path(shutil.copytree(reference, tmp_path / "sweep"))  # others read the original
    before = (reference / "sweep_state.json").read_text()
    code, _, err = cli(capsys, *_args(world, reference, "--seeds", "0,1,2"))
    assert code == 1 and "another grid: seeds were 0,1, now 0,1,2" in err
    code, _, err = cli(capsys, *_args(world, reference, "--lambdas", "1.5,-1.5"))
    assert code == 1 and "setting lambdas=1.5,-1.5 is new" in err
    code, _, err = cli(capsys, *_args(world, reference, "--lr", "0.002"))
    assert code == 1 and "train setting lr of lambdas=1.5,0 was 0.001, now 0.002" in err
    code, _, err = cli(capsys, *_args(world, reference, "--eval-n", "3"))
    assert code == 1 and "evaluation setting n was 2, now 3" in err
    assert (reference / "sweep_state.json").read_text() == before
    # the same sweep again: nothing to run, the report is recomputed (another baseline allowed)
    code, out, err = cli(capsys, *_args(world, reference, "--baseline", "1.5,-0.5"))
    assert code == 0, err
    assert "lambdas=1.5,0 vs lambdas=1.5,-0.5" in out
    rep = json.loads((reference / "sweep.json").read_text())
    assert rep["baseline"] == "lambdas=1.5,-0.5"
    # --resume: the saved settings (the last baseline too), flags on top
    code, out, err = cli(capsys, "sweep", "--resume", str(reference), "--bootstrap", "500")
    assert code == 0, err
    rep = json.loads((reference / "sweep.json").read_text())
    assert rep["baseline"] == "lambdas=1.5,-0.5" and rep["bootstrap"]["resamples"] == 500
    assert (reference / "sweep_state.json").read_text() == before


def _processes_mentioning(text: str) -> list[int]:
    """Ids of live processes whose command line contains ``text`` (read from /proc)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if text in (d / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


@pytest.mark.slow
def test_a_killed_sweep_restarts_to_the_same_report(world, tmp_path):
    """A sweep with real subprocesses is SIGKILLed after its second run's first checkpoint; that
    run's training dies with it; restarted, the sweep resumes the run and writes the uninterrupted
    sweep's report (2 settings × 1 seed: the restart path is the same for any grid)."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "tcopd", *_args(world, out, "--seeds", "0")]
    second = out / "runs" / "lambdas=1.5,-0.5" / "seed0"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (second / "train" / "checkpoints" / "latest").exists():  # its first checkpoint
        assert proc.poll() is None and time.monotonic() < deadline, "sweep ended too early"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)
    if sys.platform.startswith("linux"):  # the run's training died with the sweep
        assert _processes_mentioning(str(out)) == []
    state = json.loads((out / "sweep_state.json").read_text())["runs"]
    assert state["lambdas=1.5,0/seed0"]["status"] == "done"
    assert "lambdas=1.5,-0.5/seed0" not in state
    _sweep_here(world, out, "--seeds", "0")  # the restart (its runs in this process)
    assert "$ tcopd train --resume" in (second / "train.log").read_text()
    mine = json.loads((out / "sweep.json").read_text())
    ref = json.loads(
        (_sweep_here(world, tmp_path / "ref", "--seeds", "0") / "sweep.json").read_text()
    )
    assert _without_wall_times(mine) == _without_wall_times(ref)


@pytest.mark.slow
def test_a_failing_run_is_recorded_and_the_sweep_goes_on(world, tmp_path, capsys):
    out = tmp_path / "sweep"
    grid = tmp_path / "grid.yaml"
    # max_prompt_tokens 1 passes validation, but no prompt fits: the run fails when it loads data
    grid.write_text(yaml.safe_dump({"grid": {"max_prompt_tokens": [1, 64]}}))
    args = _args(world, out, "--config", str(grid), "--seeds", "0", "--steps", "1")
    args[args.index("--lambdas") : args.index("--lambdas") + 4] = ["--lambdas", "1.5,-0.5"]
    with runs_in_process():  # the run's exit code and log as a subprocess's (sweep_inprocess.py)
        code, _, err = cli(capsys, *args)
    assert code == 1
    assert "error: 1 of 2 runs failed" in err
    rep = json.loads((out / "sweep.json").read_text())
    (failed,) = rep["failed"]
    assert failed["setting"] == "lambdas=1.5,-0.5 max_prompt_tokens=1"
    assert "error:" in failed["error"] and "no prompt fits max_prompt_tokens=1" in failed["error"]
    assert [r["status"] for r in rep["runs"]] == ["failed", "done"]
    assert "no pair of finished seeds" in rep["claims"][0]


@pytest.mark.slow
def test_a_lora_sweep_evaluates_the_adapter(world, tmp_path, capsys):
    """With --lora a checkpoint holds adapter/, not model/: the sweep evaluates the adapter."""
    pytest.importorskip("peft")
    out = tmp_path / "sweep"
    args = _args(world, out, "--seeds", "0", "--steps", "1", "--lora", "--lora-rank", "4")
    args[args.index("--lambdas") : args.index("--lambdas") + 4] = ["--lambdas", "1.5,-0.5"]
    with runs_in_process():
        code, _, err = cli(capsys, *args)
    assert code == 0, err[-3000:]
    run_dir = out / "runs" / "lambdas=1.5,-0.5" / "seed0"
    evaluation = yaml.safe_load((run_dir / "eval.yaml").read_text())
    assert evaluation["models"] == [str(run_dir / "train/checkpoints/step-000001/adapter")]
    rep = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in rep["runs"]] == ["done"] and rep["failed"] == []


def test_per_domain_statistics_by_hand(tmp_path):
    """Problems p0, p1 are math, p2, p3 code: mean@n, tokens and paired differences per domain."""
    cfg = SweepConfig(out=str(tmp_path), settings={"multi": {}, "single": {}}, seeds="0,1")
    settings = expand_grid(cfg)
    runs = {(r.setting.name, r.seed): r for r in plan_runs(tmp_path, settings, [0, 1])}
    doms = ["math", "math", "code", "code"]
    multi = {0: [[T, F], [F, F], [T, T], [T, F]], 1: [[T, T], [F, F], [F, F], [T, T]]}
    single = {0: [[T, T], [T, F], [T, T], [T, T]], 1: [[T, T], [T, T], [F, F], [T, T]]}
    for seed in (0, 1):
        _fake_run(runs["multi", seed].dir, multi[seed], 10, [0.1], doms)
        _fake_run(runs["single", seed].dir, single[seed], 20, [0.2], doms)
    results = [report.load_result(run, {"status": "done"}) for run in runs.values()]
    rep = report.statistics(cfg, settings, settings[0], results, {})
    assert rep["domains"] == ["code", "math"]

    def frac(cs):
        return [100.0 * sum(c) / len(c) for c in cs]

    for name, table in (("multi", multi), ("single", single)):
        for d, rows in (("math", slice(0, 2)), ("code", slice(2, 4))):
            block = rep["per_setting"][name]["domains"][d]
            per_seed = {str(k): sum(frac(v[rows])) / 2 for k, v in table.items()}
            assert block["mean_at_n"]["per_seed"] == pytest.approx(per_seed)
            base = 10 if name == "multi" else 20
            assert block["mean_tokens"]["mean"] == pytest.approx(
                base + (0.5 if d == "math" else 2.5)
            )
    for d, rows in (("math", slice(0, 2)), ("code", slice(2, 4))):
        got = rep["differences"]["single"]["domains"][d]["mean_at_n"]
        expected = stats.paired_bootstrap(
            [frac(single[k][rows]) for k in (0, 1)],
            [frac(multi[k][rows]) for k in (0, 1)],
            cfg.bootstrap,
            cfg.bootstrap_seed,
        )
        assert got["diff"] == pytest.approx(expected.diff) and got["problems"] == 2
        assert got["ci"] == [expected.low, expected.high]
    assert any(line.startswith("mean@n: single [math]") for line in rep["claims"])
    files = report.write_figures(tmp_path, settings, results, rep, 1)
    assert tmp_path / "domains.png" in files and (tmp_path / "domains.png").stat().st_size > 0


def test_a_sweep_made_before_a_new_train_setting_still_resumes():
    """A train setting added to tcopd after a sweep was made (absent from its saved identity)
    counts as its default: the sweep resumes; a non-default value is still a difference."""
    from tcopd.pipelines.sweep.config import identity_difference

    new = {
        "settings": [{"name": "a", "dir": "a", "values": {}}],
        "seeds": [0],
        "train": {"a": {"lr": 1e-3, "teacher_prompt": []}},
        "eval": {},
    }
    old = {**new, "train": {"a": {"lr": 1e-3}}}
    assert identity_difference(old, new) is None
    changed = {**new, "train": {"a": {"lr": 1e-3, "teacher_prompt": ["e=f.yaml"]}}}
    assert "teacher_prompt of a was [], now ['e=f.yaml']" in identity_difference(old, changed)


def test_printed_claims_keep_their_domain_brackets(monkeypatch):
    """`A [math] > B [math]` is printed as it is (rich would read `[math]` as markup, drop it)."""
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from tcopd.cli import sweep as cli_sweep

    buf = io.StringIO()
    monkeypatch.setattr(cli_sweep, "console", Console(file=buf, width=300))
    report = {
        "eval": {"n": 2}, "benchmark": "toy-multitask", "settings": [], "per_setting": {},
        "differences": {}, "baseline": "b", "target": {"value": None},
        "claims": ["mean@n: a [math] > b [math]: +1.00 points"],
        "failed": [{"setting": "x [code]", "seed": 0, "error": "boom [1]"}],
    }  # fmt: skip
    cli_sweep._render(SimpleNamespace(report=report, files=[]))
    out = buf.getvalue()
    assert "mean@n: a [math] > b [math]: +1.00 points" in out
    assert "x [code] seed 0: boom [1]" in out

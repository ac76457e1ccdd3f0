"""``tcopd sweep``: a grid of training settings × seeds, every final model evaluated on one
benchmark with one sampling setup, then the statistics to claim an ordering.

The steps: ``plan`` (expand the grid, resolve and check every run's settings before anything
starts, refuse a restart with another grid) → ``runner.run_all`` (``tcopd train`` then ``tcopd
eval`` per run in subprocesses, resumable) → ``report`` (``sweep.json``, CSVs, claims, figures).

Where things are: ``config.py`` (SweepConfig, the grid, resolved settings, what a restart must
match), ``runner.py`` (state, subprocesses, devices), ``report.py`` (statistics, claims and
tables; the formulas in ``tcopd.runtime.evaluation.stats``), ``figures.py`` (curves, forest plot, λ
heatmap, domains), ``child.py`` (the subprocess launcher).

Restart: running the same sweep again (or ``--resume OUT``) skips finished runs, evaluates
trained ones, resumes interrupted trainings and retries failed runs; the statistics are
recomputed from the files, so they equal an uninterrupted sweep's apart from wall times.
Analysis settings (baseline, target, smooth, bootstrap) may change on a restart; the grid, the
seeds, the train and the evaluation settings may not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tcopd.config import build, read_yaml, to_dict
from tcopd.errors import ConfigError
from tcopd.pipelines.sweep import figures
from tcopd.pipelines.sweep import report as rep
from tcopd.pipelines.sweep.config import (
    Setting,
    SweepConfig,
    check_train_config,
    eval_values,
    expand_grid,
    find_baseline,
    identity,
    identity_difference,
    load_sweep_config,
    run_train_config,
)
from tcopd.pipelines.sweep.runner import Run, RunContext, State, device_slots, plan_runs, run_all
from tcopd.progress import Progress
from tcopd.progress import report as notify
from tcopd.runtime.data import io

__all__ = [
    "SweepConfig",
    "SweepResult",
    "is_sweep_dir",
    "load_resume_config",
    "load_runs",
    "load_sweep_config",
    "run",
]

CONFIG_FILE = "sweep_config.yaml"
STATE_FILE = "sweep_state.json"
LOCK_FILE = ".sweep.lock"


@dataclass
class SweepResult:
    out: Path
    report: dict[str, Any]  # the content of sweep.json
    files: list[Path]  # sweep.json, CSVs, figures


@dataclass
class _Plan:
    settings: list[Setting]
    baseline: Setting
    runs: list[Run]
    trains: dict[str, Any]  # run key → its TrainConfig (resolved)
    evals: dict[str, Any]  # EvalConfig keys of the final evaluation
    identity: dict[str, Any]


def load_resume_config(
    out: str | Path, flags: dict[str, Any], train_flags: dict[str, Any]
) -> SweepConfig:
    """The sweep saved in ``out``, with the flags given now on top (a grid change is refused later)."""
    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"--resume {out}: not a sweep directory (no {CONFIG_FILE})")
    values = read_yaml(path).get("sweep") or {}
    values.update({k: v for k, v in flags.items() if v is not None})
    values["train"] = {
        **values.get("train", {}),
        **{k: v for k, v in train_flags.items() if v is not None},
    }
    values["out"] = str(out)
    return build(SweepConfig, values)


def is_sweep_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a sweep (its ``sweep_config.yaml``)."""
    return (Path(path) / CONFIG_FILE).is_file()


def load_runs(out: str | Path) -> list[tuple[Run, str]]:
    """Every run of the sweep in ``out``, seed-major, with its status (pending, trained, done,
    failed): the settings and seeds of its ``sweep_config.yaml``, the state of ``sweep_state.json``."""
    out = Path(out)
    if not is_sweep_dir(out):
        raise ConfigError(f"{out} is not a sweep directory (no {CONFIG_FILE})")
    saved = read_yaml(out / CONFIG_FILE)
    settings = [Setting(s["name"], s["dir"], s.get("values") or {}) for s in saved["settings"]]
    state = State(out / STATE_FILE)
    return [(r, state.get(r.key)["status"]) for r in plan_runs(out, settings, saved["seeds"])]


def plan(cfg: SweepConfig, progress: Progress | None = None) -> _Plan:
    """Expand the grid and resolve every run's settings; any invalid setting is refused by name."""
    out = Path(cfg.out)
    settings = expand_grid(cfg)
    baseline = find_baseline(settings, cfg.baseline)
    seeds = cfg.seed_list
    runs = plan_runs(out, settings, seeds)
    trains: dict[str, Any] = {}
    per_setting: dict[str, Any] = {}
    for i, run in enumerate(runs):
        notify(progress, "checking settings", done=i, total=len(runs), detail=run.label)
        train = run_train_config(cfg, run.setting, run.seed, run.dir)
        trains[run.key] = check_train_config(train, run.setting, progress)
        per_setting.setdefault(run.setting.name, trains[run.key])
    evals = eval_values(cfg)
    return _Plan(
        settings, baseline, runs, trains, evals, identity(settings, seeds, per_setting, evals)
    )


def _check_restart(out: Path, new: dict[str, Any]) -> None:
    path = out / CONFIG_FILE
    if not path.is_file():
        return
    diff = identity_difference(read_yaml(path), new)
    if diff is not None:
        raise ConfigError(
            f"{out} holds a sweep with another grid: {diff}. Re-run it with its own settings "
            f"(or tcopd sweep --resume {out}) to continue it, or use another --out"
        )


class _Lock:
    """``OUT/.sweep.lock`` with this process's id: two sweeps must not run into one directory."""

    def __init__(self, out: Path):
        self.path = out / LOCK_FILE

    def __enter__(self) -> _Lock:
        if self.path.exists():
            try:
                pid = int(self.path.read_text().strip() or 0)
                os.kill(pid, 0)  # raises when no such process: a stale lock of a killed sweep
            except (ValueError, ProcessLookupError):
                pid = 0
            except PermissionError:  # alive, another user's
                pass
            if pid and pid != os.getpid():
                raise ConfigError(f"another sweep (pid {pid}) is running in {self.path.parent}")
        io.atomic_write_text(self.path, str(os.getpid()))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.path.unlink(missing_ok=True)


def _header(p: _Plan, seeds: list[int]) -> dict[str, Any]:
    evals = p.evals
    benchmark = evals.get("benchmark") or Path(str(evals.get("data"))).stem
    return {"benchmark": benchmark, "eval": evals, "seeds": seeds}


def run(cfg: SweepConfig, progress: Progress | None = None) -> SweepResult:
    """Plan, run every unfinished run, write the report (see the module docstring)."""
    out = Path(cfg.out)
    p = plan(cfg, progress)
    _check_restart(out, p.identity)
    out.mkdir(parents=True, exist_ok=True)
    with _Lock(out):
        io.atomic_write_text(
            out / CONFIG_FILE,
            yaml.safe_dump(
                {**p.identity, "sweep": to_dict(cfg)}, sort_keys=False, allow_unicode=True
            ),
        )
        for r in p.runs:
            r.dir.mkdir(parents=True, exist_ok=True)
            io.atomic_write_text(
                r.dir / "train.yaml", yaml.safe_dump(to_dict(p.trains[r.key]), sort_keys=False)
            )
        state = State(out / STATE_FILE)
        first = next(iter(p.trains.values()))
        ctx = RunContext(state, p.evals, p.trains, progress)
        run_all(p.runs, device_slots(cfg.devices, first.device), ctx)
        notify(progress, "statistics")
        results = [rep.load_result(r, state.get(r.key)) for r in p.runs]
        stats = rep.statistics(cfg, p.settings, p.baseline, results, _header(p, cfg.seed_list))
        files = [io.write_json(out / "sweep.json", stats)]
        files += rep.write_tables(out, stats, cfg.seed_list)
        files += figures.write_figures(out, p.settings, results, stats, cfg.smooth)
    return SweepResult(out, stats, files)

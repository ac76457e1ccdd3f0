"""Running a sweep's runs: ``tcopd train`` then ``tcopd eval``, each in a subprocess, resumably.

Choices:

- Each run lives in ``OUT/runs/<setting>/seed<k>/``: ``train.yaml`` (its resolved settings),
  ``train/`` (the training run), ``eval.yaml`` and ``eval/`` (the final evaluation), and the
  subprocesses' output in ``train.log`` / ``eval.log``.
- ``OUT/sweep_state.json`` records each run's status (``trained``, ``done``, ``failed`` with
  its error line) and wall times; it is rewritten atomically after every change. A restart
  skips ``done`` runs, evaluates ``trained`` ones, resumes a training that has a
  ``config.yaml`` (``tcopd train --resume``: from its last checkpoint) and retries failed runs.
- A subprocess is ``python -m tcopd.pipelines.sweep.child``: the CLI, killed with the sweep
  (Linux), so a killed sweep leaves nothing running into the directories it will resume.
- A run that exits non-zero is recorded as failed with its last ``error:`` line (else the last
  line of its output) and the sweep goes on; one interrupted (Ctrl-C) stops the sweep as it is.
- Devices: one run at a time per device slot. With CUDA devices, each slot is one GPU
  (``CUDA_VISIBLE_DEVICES`` per subprocess) and the slots work concurrently; on CPU there is one
  slot. The order is seed-major (every setting with seed 0, then seed 1, ...), so the first
  comparisons are possible early.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tcopd.pipelines.sweep.config import Setting
from tcopd.pipelines.train import TrainConfig
from tcopd.progress import Progress, report
from tcopd.runtime.data import io
from tcopd.runtime.training.checkpoint import checkpoint_model, latest_checkpoint

INTERRUPTED = (130, -2)  # the CLI's exit code on Ctrl-C; killed by SIGINT


class Interrupted(KeyboardInterrupt):
    """A run's subprocess was interrupted (Ctrl-C): stop the sweep, keep every state as it is
    (the CLI reports it as ``error: interrupted``)."""


@dataclass(frozen=True)
class Run:
    setting: Setting
    seed: int
    dir: Path  # OUT/runs/<setting dir>/seed<k>

    @property
    def key(self) -> str:
        return f"{self.setting.dirname}/seed{self.seed}"

    @property
    def label(self) -> str:
        return f"{self.setting.name} seed {self.seed}"

    @property
    def train_dir(self) -> Path:
        return self.dir / "train"

    @property
    def eval_dir(self) -> Path:
        return self.dir / "eval"


def plan_runs(out: Path, settings: list[Setting], seeds: list[int]) -> list[Run]:
    """Every (setting, seed), seed-major."""
    return [
        Run(s, seed, out / "runs" / s.dirname / f"seed{seed}") for seed in seeds for s in settings
    ]


class State:
    """``sweep_state.json``: ``{run key: {status, trained, phase, error, train_wall_s, eval_wall_s}}``.

    ``status``: pending, trained, done or failed (``phase``: train or eval, ``error``: its line).
    """

    def __init__(self, path: Path):
        self.path = path
        self.runs: dict[str, dict[str, Any]] = (
            json.loads(path.read_text()).get("runs", {}) if path.exists() else {}
        )
        self._lock = threading.Lock()

    def get(self, key: str) -> dict[str, Any]:
        with self._lock:
            return dict(self.runs.get(key, {"status": "pending"}))

    def update(self, key: str, **fields: Any) -> None:
        with self._lock:
            self.runs[key] = {**self.runs.get(key, {"status": "pending"}), **fields}
            io.write_json(self.path, {"runs": self.runs})


def device_slots(devices: str | None, train_device: str | None) -> list[str | None]:
    """One entry per concurrent run: a CUDA device id for ``CUDA_VISIBLE_DEVICES``, or None."""
    if devices:
        return [d.strip() for d in devices.split(",") if d.strip()]
    if train_device is not None and not train_device.startswith("cuda"):
        return [None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()] or [None]
    import torch  # only here: a sweep on CPU never needs it

    return [str(i) for i in range(torch.cuda.device_count())] or [None]


# ----------------------------------------------------------------------------- one subprocess


def error_line(log: Path) -> str:
    """The last ``error:`` line of a log, else its last non-empty line."""
    lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("error:")]
    return (errors or lines or ["(no output)"])[-1]


def run_cli(
    args: list[str], log: Path, device: str | None, tick: Callable[[], None] | None = None
) -> int:
    """``tcopd ARGS`` in a subprocess, output appended to ``log``; returns its exit code."""
    env = dict(os.environ)
    env.pop("TCOPD_DEBUG", None)  # a failure should end in one error line, not a traceback
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    cmd = [sys.executable, "-m", "tcopd.pipelines.sweep.child", str(os.getpid()), *args]
    with open(log, "a") as f:
        f.write(f"$ tcopd {' '.join(args)}\n")
        f.flush()
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        while True:
            try:
                return proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                if tick is not None:
                    tick()


# -------------------------------------------------------------------------------- one run


@dataclass
class RunContext:
    """What every run needs: the state, evaluation settings and a progress callback."""

    state: State
    eval_values: dict[str, Any]  # EvalConfig keys shared by every run
    trains: dict[str, TrainConfig]  # run key → its resolved train settings
    progress: Progress | None

    def eval_config(self, run: Run, model: Path) -> dict[str, Any]:
        """The run's EvalConfig keys: its training's template and device unless set for all."""
        train = self.trains[run.key]
        own = {"template": train.template} | ({"device": train.device} if train.device else {})
        return {**own, **self.eval_values, "models": [str(model)], "out": str(run.eval_dir)}


def _metrics_rows(train_dir: Path) -> int:
    path = train_dir / "metrics.jsonl"
    return sum(1 for _ in open(path)) if path.exists() else 0


def _train(run: Run, device: str | None, ctx: RunContext) -> bool:
    """``tcopd train`` for the run, or ``--resume`` when it has started; False: it failed."""
    steps = ctx.trains[run.key].steps

    def tick() -> None:
        done = _metrics_rows(run.train_dir)
        report(ctx.progress, "run", done=done, total=steps, detail=f"{run.label}: train")

    tick()
    if (run.train_dir / "config.yaml").exists():
        args = ["train", "--resume", str(run.train_dir)]
    else:
        args = ["train", "--config", str(run.dir / "train.yaml")]
    t0 = time.monotonic()
    code = run_cli(args, run.dir / "train.log", device, tick)
    wall = ctx.state.get(run.key).get("train_wall_s", 0.0) + time.monotonic() - t0
    if code in INTERRUPTED:
        raise Interrupted(run.label)
    if code != 0:
        error = error_line(run.dir / "train.log")
        ctx.state.update(run.key, status="failed", phase="train", error=error, train_wall_s=wall)
        return False
    ctx.state.update(run.key, status="trained", trained=True, error=None, train_wall_s=wall)
    return True


def _evaluate(run: Run, device: str | None, ctx: RunContext) -> bool:
    """``tcopd eval`` of the run's final checkpoint (eval resumes its own samples)."""
    report(ctx.progress, "run", detail=f"{run.label}: eval")
    final = latest_checkpoint(run.train_dir)
    if final is None:  # e.g. its checkpoints were deleted: train it again on the next restart
        error = f"error: {run.train_dir} has no checkpoint to evaluate"
        ctx.state.update(run.key, status="failed", trained=False, phase="eval", error=error)
        return False
    eval_yaml = run.dir / "eval.yaml"
    values = ctx.eval_config(run, checkpoint_model(final))
    io.atomic_write_text(eval_yaml, yaml.safe_dump(values, sort_keys=False))
    t0 = time.monotonic()
    code = run_cli(["eval", "--config", str(eval_yaml)], run.dir / "eval.log", device)
    wall = ctx.state.get(run.key).get("eval_wall_s", 0.0) + time.monotonic() - t0
    if code in INTERRUPTED:
        raise Interrupted(run.label)
    if code != 0:
        error = error_line(run.dir / "eval.log")
        ctx.state.update(run.key, status="failed", phase="eval", error=error, eval_wall_s=wall)
        return False
    ctx.state.update(run.key, status="done", error=None, phase=None, eval_wall_s=wall)
    return True


def execute(run: Run, device: str | None, ctx: RunContext) -> str:
    """Train (unless trained) and evaluate one run; returns its status: done or failed."""
    run.dir.mkdir(parents=True, exist_ok=True)
    if not ctx.state.get(run.key).get("trained") and not _train(run, device, ctx):
        return "failed"
    return "done" if _evaluate(run, device, ctx) else "failed"


def run_all(runs: list[Run], slots: list[str | None], ctx: RunContext) -> None:
    """Every run not yet done, one per device slot at a time (see the module docstring)."""
    todo = [r for r in runs if ctx.state.get(r.key)["status"] != "done"]
    done = len(runs) - len(todo)
    report(ctx.progress, "sweep", done=done, total=len(runs))
    free: queue.Queue[str | None] = queue.Queue()
    for slot in slots:
        free.put(slot)

    def job(run: Run) -> str:
        device = free.get()
        try:
            return execute(run, device, ctx)
        finally:
            free.put(device)

    with ThreadPoolExecutor(max_workers=len(slots), thread_name_prefix="sweep") as pool:
        futures = {pool.submit(job, r): r for r in todo}
        try:
            for future in as_completed(futures):
                run = futures[future]
                status = future.result()
                done += 1
                if status == "failed":
                    error = ctx.state.get(run.key).get("error")
                    report(ctx.progress, "warning", detail=f"{run.label} failed: {error}")
                report(
                    ctx.progress,
                    "sweep",
                    done=done,
                    total=len(runs),
                    detail=f"{run.label}: {status}",
                )
        except BaseException:
            for f in futures:
                f.cancel()  # runs not started yet stay pending
            raise

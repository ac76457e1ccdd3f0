"""``tcopd train``'s loop: set up, then steps, evaluations and checkpoints (docs/algorithm.md, docs/train.md).

The step itself is in ``step.py`` (its docstring lists the phases and their modules).

Choices:

- Determinism: the data order and every step's sampling seed derive from (seed, step)
  (``data.py``), so a step depends only on the weights and optimizer state; resuming from a
  checkpoint reproduces an uninterrupted run (one process).
- ``metrics.jsonl`` is written by rank 0, one row per step, flushed as it goes; on resume the
  rows past the checkpoint are dropped.
- Multi-process: each rank takes ``batch_size / world`` prompts; metrics are summed over ranks.
  A failure on one rank stops every rank with the same error (step.py), and the process group
  is shut down cleanly; the last checkpoint is kept.
- ``--max-staleness 1``: the next batch is generated while this one trains (ahead.py); a
  checkpoint holds that batch, so a resumed run trains on what the uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import shutil
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from tcopd.config import build, read_yaml, to_dict, write_resolved
from tcopd.errors import ConfigError
from tcopd.pipelines.train import checkpointing
from tcopd.pipelines.train.ahead import Ahead
from tcopd.pipelines.train.config import TrainConfig, resume_conflicts
from tcopd.pipelines.train.evaluate import evaluate
from tcopd.pipelines.train.metrics import timer
from tcopd.pipelines.train.rollout import rollout
from tcopd.pipelines.train.score import start_served
from tcopd.pipelines.train.setup import Trainer, build_trainer, teachers_of
from tcopd.pipelines.train.step import train_step
from tcopd.progress import Event, Progress
from tcopd.runtime.data.io import JsonlAppender, read_jsonl_tolerant, write_jsonl
from tcopd.runtime.generation.vllm_engine import INSTALL_HINT
from tcopd.runtime.models import lora
from tcopd.runtime.toy import ensure_toy
from tcopd.runtime.training import checkpoint as ckpt
from tcopd.runtime.training import distributed


@dataclass
class TrainResult:
    run_dir: Path
    steps_done: int
    last_metrics: dict[str, Any]
    final_model: Path | None
    weights_digest: str = ""  # sha256 of this rank's full weights (replicas must agree)


def resolve_toy(cfg: TrainConfig, progress: Progress | None = None) -> TrainConfig:
    """Fill the toy world's paths into a ``toy: true`` config (building the world if absent).

    Default teachers (unless ``--teacher`` names them): the math expert, and the code
    anti-expert when two λ are given — each only where ``--expert`` / ``--anti-expert`` is not
    given (so ``--anti-expert http://host:8001`` serves the anti-expert beside the toy expert);
    default data: the toy *math* train and test sets (the paper's single-task setting).
    """
    if not cfg.toy:
        return cfg
    named = bool(cfg.teacher or cfg.served_teachers)  # the user names every teacher
    two = bool(cfg.lambdas) and len(cfg.lambdas.split(",")) >= 2
    if cfg.student and cfg.data and (named or (cfg.expert and (cfg.anti_expert or not two))):
        return cfg  # everything given explicitly: no need to touch (or build) the toy world

    if progress:
        progress(Event("toy world (installed on first use)"))
    world = ensure_toy()
    return replace(
        cfg,
        student=cfg.student or str(world.student),
        expert=cfg.expert or (None if named else str(world.expert)),
        anti_expert=cfg.anti_expert or (None if named or not two else str(world.anti_expert)),
        data=cfg.data or str(world.train_files["math"]),
        eval_data=cfg.eval_data or str(world.test_files["math"]),
    )


def load_resume_config(run_dir: Path, flags: dict[str, Any]) -> TrainConfig:
    """The saved config of ``run_dir``, with the flags that may change (steps, ...) applied."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"--resume {run_dir}: not a run directory (no config.yaml)")
    saved = read_yaml(path)
    saved.pop("teachers", None)
    saved.pop("world_size", None)
    conflicts = resume_conflicts(saved, flags)
    if conflicts:
        raise ConfigError(
            f"--resume {run_dir}: flags conflict with the run's config ({'; '.join(conflicts)})"
        )
    cfg = build(TrainConfig, {**saved, "out": str(run_dir)})
    changes = build(TrainConfig, {**saved, **_given(flags), "out": str(run_dir)})
    return replace(cfg, **{k: getattr(changes, k) for k in _given(flags) if k != "out"})


def _given(flags: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in flags.items() if v is not None and k != "out"}


def check_inputs(cfg: TrainConfig) -> None:
    """What can be checked without loading anything: paths given, teachers and λ well-formed."""
    if not cfg.student:
        raise ConfigError("no student: pass --student PATH (or --toy)")
    if not cfg.data:
        raise ConfigError(
            "no training data: pass --data FILE (prepared with `tcopd prepare`), or --toy"
        )
    teachers_of(cfg)
    if cfg.lora:
        lora.require_peft("--lora")
    if cfg.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ConfigError(f"--engine vllm: {INSTALL_HINT}")


def run(
    cfg: TrainConfig,
    resume: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> TrainResult:
    """Train; see the module docstring. ``resume``: continue the run in ``cfg.out``."""
    cfg = resolve_toy(cfg, progress)
    check_inputs(cfg)
    run_dir = Path(cfg.out)
    dist = distributed.init_distributed(cfg.device)
    if not resume:
        _check_new_run_dir(run_dir, overwrite, remove=dist.is_main)
        distributed.barrier()  # no rank starts writing while rank 0 still removes the old run

    def emit(phase: str, **fields: Any) -> None:
        if dist.is_main and progress is not None:
            progress(Event(phase, **fields))

    tr = build_trainer(cfg, dist, emit)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        resolved = to_dict(cfg) | {
            "teachers": [to_dict(s) for s in tr.specs],
            "world_size": dist.world_size,
        }
        write_resolved(resolved, run_dir / "config.yaml")
    ahead = _ahead(tr) if cfg.max_staleness else None
    together = False  # every rank stops with the same error (distributed.RankFailed)
    try:
        start = checkpointing.restore(tr, run_dir, ahead) if resume else 0
        row = _loop(tr, run_dir, start, ahead)
    except distributed.RankFailed:
        together = True
        raise
    finally:
        try:
            if ahead is not None:
                ahead.close()
            if tr.grader is not None:
                tr.grader.close()
        finally:
            tr.rollout.close()  # a vLLM engine's processes stop here, before the group goes
            if together and dist.distributed:
                distributed.shutdown()  # every rank is here: the group comes down cleanly
    final = ckpt.latest_checkpoint(run_dir)
    digest = weights_digest(tr.learner.full_state_dict())
    if dist.distributed:
        distributed.shutdown()  # under a launcher: tear the group down together, not at exit
    model = ckpt.checkpoint_model(final) if final else None
    return TrainResult(run_dir, cfg.steps, row, model, digest)


def _ahead(tr: Trainer) -> Ahead:
    """``--max-staleness 1``: generation runs ahead in a thread; as soon as a batch exists the
    served teachers start scoring it."""
    return Ahead(tr.reduce, partial(rollout, tr), partial(start_served, tr))


def _loop(tr: Trainer, run_dir: Path, start: int, ahead: Ahead | None) -> dict[str, Any]:
    """Steps ``start..steps-1``: metrics row, evaluation and checkpoint when due."""
    cfg = tr.cfg
    metrics_path = run_dir / "metrics.jsonl"
    if tr.dist.is_main:
        kept = [r for r in read_jsonl_tolerant(metrics_path) if r.get("step", 0) <= start]
        write_jsonl(metrics_path, kept)
    tb = _tensorboard(run_dir) if cfg.tensorboard and tr.dist.is_main else None
    row: dict[str, Any] = {}
    saving = 0.0  # the last checkpoint's write time, reported in the next row
    with JsonlAppender(metrics_path) if tr.dist.is_main else _Nothing() as appender:
        for step in range(start, cfg.steps):
            row = train_step(tr, step, ahead) | {"time_checkpoint_s": saving}
            last = step + 1 == cfg.steps
            if tr.eval_data is not None and (_due(cfg.eval_every, step) or last):
                times: dict[str, float] = {}
                with timer("eval", times):
                    row.update(evaluate(tr, step))
                row["time_eval_s"] = times["eval"]
            appender.write(row)
            if tb is not None:
                for k, v in row.items():
                    if isinstance(v, (int, float)) and math.isfinite(v):
                        tb.add_scalar(k, v, row["step"])
            tr.emit("done step", step=step, metrics=row)
            saving = 0.0
            if _due(cfg.save_every, step) or last:
                t0 = time.perf_counter()
                checkpointing.save(tr, run_dir, step + 1, ahead)
                saving = time.perf_counter() - t0
    return row


def _due(every: int, step: int) -> bool:
    return bool(every) and (step + 1) % every == 0


class _Nothing:
    """A do-nothing appender for ranks other than 0."""

    def __enter__(self) -> _Nothing:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def write(self, row: dict[str, Any]) -> None:
        pass


def _check_new_run_dir(out: Path, overwrite: bool, remove: bool) -> None:
    """Refuse an ``out`` that holds a run, unless ``overwrite`` (then rank 0 ``remove`` s it)."""
    if (out / "config.yaml").exists() or (out / "metrics.jsonl").exists():
        if not overwrite:
            raise ConfigError(
                f"{out} already holds a run: pass --resume {out} to continue it, or --overwrite to replace it"
            )
        if remove:
            shutil.rmtree(out)


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over the names and float32 bytes of every tensor (replicas must agree)."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        h.update(k.encode())
        h.update(state_dict[k].float().contiguous().numpy().tobytes())
    return h.hexdigest()


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ConfigError(
            f"--tensorboard needs the tensorboard package: pip install 'tcopd[tensorboard]' ({e})"
        )
    return SummaryWriter(str(run_dir / "tb"))

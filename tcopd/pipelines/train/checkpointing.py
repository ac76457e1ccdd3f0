"""Checkpoints: DeepSpeed state + an HF model directory, committed atomically; resume from them.

A checkpoint is written into a temporary directory and renamed into place by rank 0 only when
complete (``runtime/training/checkpoint.py``), so a run killed mid-save keeps its previous checkpoint.
Resuming restores weights, optimizer state and every RNG, then re-syncs the rollout engine.
With ``--max-staleness 1`` a checkpoint also holds the batch generated ahead (ahead.py).

With ``--lora`` a checkpoint holds ``adapter/`` (PEFT's format, with the tokenizer) instead of
``model/``, and DeepSpeed's state leaves out the frozen base weights: resuming loads the base
model from ``--student`` again and the adapter and its optimizer state from the checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from tcopd.errors import ConfigError
from tcopd.pipelines.train.ahead import Ahead
from tcopd.pipelines.train.rollout import sync
from tcopd.pipelines.train.setup import Trainer
from tcopd.runtime.models import lora
from tcopd.runtime.training import checkpoint as ckpt
from tcopd.runtime.training.distributed import on_every_rank


def save(tr: Trainer, run_dir: Path, step: int, ahead: Ahead | None = None) -> Path:
    """Checkpoint after ``step`` completed steps; returns its directory.

    What rank 0 writes alone (the temporary directory, the HF model or adapter, the commit) runs
    under ``on_every_rank``: a failure there (a full disk) stops every rank with its error, and
    each agreement is also the point where the ranks wait for rank 0. ``ahead``
    (``--max-staleness 1``): each rank adds its share of the batch generated ahead."""
    tr.emit("checkpoint", step=step - 1)
    root = ckpt.checkpoint_root(run_dir)
    tmp = on_every_rank(tr.reduce, ckpt.begin if tr.dist.is_main else ckpt.temporary, run_dir, step)
    adapter = tr.lora_student
    tr.learner.save(tmp, {"step": step}, frozen=adapter is None)
    if ahead is not None:
        on_every_rank(tr.reduce, ahead.save, tmp, tr.dist.rank)
    state_dict = tr.learner.full_state_dict(trainable_only=adapter is not None)

    def write() -> Path:
        if adapter is not None:
            lora.save_adapter(adapter, state_dict, tr.tokenizer, tmp / "adapter")
        else:
            ckpt.save_hf(tr.learner.module, tr.tokenizer, state_dict, tmp / "model")
        state = {
            "step": step,
            "seed": tr.cfg.seed,
            "rng": ckpt.rng_state(),
            "world_size": tr.dist.world_size,
        }
        return ckpt.commit(run_dir, tmp, step, state, keep=tr.cfg.keep_checkpoints)

    final = on_every_rank(
        tr.reduce, write if tr.dist.is_main else lambda: root / ckpt.step_name(step)
    )
    return final


def restore(tr: Trainer, run_dir: Path, ahead: Ahead | None = None) -> int:
    """Load the latest checkpoint of ``run_dir``; returns the number of steps it completed.
    ``ahead``: it gets the batch generated ahead, when the checkpoint holds one."""
    path = ckpt.latest_checkpoint(run_dir)
    if path is None:
        return 0
    state = ckpt.read_state(path)
    if state.get("world_size", 1) != tr.dist.world_size:
        raise ConfigError(
            f"--resume: the run was saved with {state['world_size']} process(es), now {tr.dist.world_size}"
        )
    tr.learner.load(path, frozen=tr.lora_student is None)
    ckpt.set_rng_state(state["rng"])
    sync(tr)
    step = int(state["step"])
    if ahead is not None:
        ahead.restore(path, tr.dist.rank, step)
    return step

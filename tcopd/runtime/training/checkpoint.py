"""Run-directory checkpoints: HF weights + DeepSpeed optimizer state + trainer state.

Layout (``RUN_DIR/checkpoints/``)::

    step-000010/            a complete checkpoint
        model/              HF directory (config, safetensors, tokenizer): loadable by transformers / vLLM
        adapter/            instead of model/ with --lora: the adapter in PEFT's format (+ tokenizer)
        deepspeed/          DeepSpeed's own files (weights, optimizer, per rank)
        trainer_state.json  step, data position, RNG states
    latest                  the name of the newest complete checkpoint (written last, atomically)

A checkpoint is written under ``.tmp-step-N`` and renamed when complete, then ``latest`` is
rewritten: a kill at any moment leaves the previous checkpoint intact and ``latest`` pointing
at a complete one.
"""

from __future__ import annotations

import ast
import base64
import io
import json
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from tcopd.runtime.data.io import atomic_write_text
from tcopd.runtime.models.loading import quiet_hf_progress


def rng_state() -> dict[str, Any]:
    """Python and torch RNG states, JSON-serialisable."""
    buf = io.BytesIO()
    torch.save(
        {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        buf,
    )
    return {"python": repr(random.getstate()), "torch": base64.b64encode(buf.getvalue()).decode()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuplify(ast.literal_eval(state["python"])))
    blob = torch.load(io.BytesIO(base64.b64decode(state["torch"])), weights_only=False)
    torch.set_rng_state(blob["torch"])
    if torch.cuda.is_available() and blob["cuda"]:
        torch.cuda.set_rng_state_all(blob["cuda"])


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    root = checkpoint_root(run_dir)
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / "trainer_state.json").is_file() else None


def checkpoint_model(checkpoint: Path) -> Path:
    """What a checkpoint's weights are evaluated from: ``adapter/`` (``--lora``) or ``model/``."""
    adapter = checkpoint / "adapter"
    return adapter if adapter.is_dir() else checkpoint / "model"


def temporary(run_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of ``step`` is written before :func:`commit` renames it."""
    return checkpoint_root(run_dir) / f".tmp-{step_name(step)}"


def begin(run_dir: str | Path, step: int) -> Path:
    """A fresh temporary directory for the checkpoint of ``step`` (:func:`temporary`)."""
    tmp = temporary(run_dir, step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit(run_dir: str | Path, tmp: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write the trainer state, rename ``tmp`` into place, point ``latest`` at it, prune old ones."""
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
    root = checkpoint_root(run_dir)
    final = root / step_name(step)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    atomic_write_text(root / "latest", final.name + "\n")
    complete = sorted(p for p in root.glob("step-*") if (p / "trainer_state.json").is_file())
    for old in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def read_state(path: Path) -> dict[str, Any]:
    return json.loads((path / "trainer_state.json").read_text())


def save_hf(
    model: torch.nn.Module, tokenizer: Any, state_dict: dict[str, torch.Tensor], out: Path
) -> None:
    """An HF model directory (weights from ``state_dict``, config, tokenizer) under ``out``."""
    with quiet_hf_progress():
        model.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(out)

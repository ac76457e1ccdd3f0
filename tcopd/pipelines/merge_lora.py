"""``tcopd prepare merge-lora``: a LoRA adapter directory as a plain Hugging Face model directory.

Steps:
1. Read the adapter directory (``adapter_config.json``; its ``base_model_name_or_path`` names
   the base model, which must exist) and load base + adapter (peft).
2. Logits of the adapter model (unmerged: ``W x + (α/r)·B·A x``) on
   :data:`~tcopd.runtime.models.loading.PROBE_TEXT`.
3. Fold the adapter into the weights (``W + (α/r)·B·A``), save the model and the tokenizer into
   a temporary directory next to the output.
4. Check: reload that directory with plain ``from_pretrained``; its logits on the probe must
   equal step 2's within ``TOLERANCE[dtype] × max(1, max |logit|)``. Then rename it into place.

Nothing half-written: a failure removes the temporary directory; an existing non-empty output
is replaced only with ``--force``, once the new one has passed its check.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from tcopd.config import field
from tcopd.errors import ConfigError, ModelError
from tcopd.runtime.models import lora
from tcopd.runtime.models.loading import (
    PROBE_TEXT,
    load_causal_lm,
    load_tokenizer,
    quiet_hf_progress,
    vocab_size,
)

TOLERANCE = {"float32": 1e-5, "bfloat16": 0.1}  # × max(1, max |adapter-model logit|)


@dataclass(frozen=True)
class MergeConfig:
    adapter: str = field(help="The adapter directory (adapter_config.json + weights).")
    out: str = field(help="Output HF model directory.")
    dtype: Literal["float32", "bfloat16"] = field("float32", help="dtype of the saved weights.")
    force: bool = field(False, help="Replace an output directory that is not empty.")


@dataclass(frozen=True)
class MergeResult:
    out: Path
    base: str
    max_abs_logit_diff: float
    max_abs_logit: float
    tolerance: float
    probe_tokens: int


def run(cfg: MergeConfig) -> MergeResult:
    """Merge, save, check (see the module docstring)."""
    adapter = lora.adapter_dir(cfg.adapter)
    if adapter is None:
        raise ConfigError(
            f"--adapter {cfg.adapter!r} is not an adapter directory (no {lora.ADAPTER_CONFIG})"
        )
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not cfg.force:
        raise ConfigError(f"--out {out} is not empty: pass --force to replace it")
    tokenizer = load_tokenizer(adapter.path)
    model = lora.attach(load_causal_lm(adapter.base, dtype=cfg.dtype), adapter)
    ids = _probe_ids(tokenizer, vocab_size(model.get_base_model()))
    with torch.no_grad():
        want = model(ids).logits.float()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        with quiet_hf_progress():
            lora.merged(model).save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        with torch.no_grad():
            got = load_causal_lm(tmp, dtype=cfg.dtype)(ids).logits.float()
        diff, scale = (got - want).abs().max().item(), want.abs().max().item()
        tol = TOLERANCE[cfg.dtype] * max(1.0, scale)
        if not diff <= tol:
            raise ModelError(
                f"merged model differs from the adapter model: max |Δ logit| {diff:.3g} > "
                f"{tol:.3g} on the probe text; nothing written"
            )
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return MergeResult(out, adapter.base, diff, scale, tol, int(ids.shape[1]))


def _probe_ids(tokenizer, vocab: int) -> torch.Tensor:
    ids = [i for i in tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"] if i < vocab]
    return torch.tensor([ids or [0]])

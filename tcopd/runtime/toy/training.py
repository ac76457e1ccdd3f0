"""Model construction and CPU supervised training of the toy world's three models.

The models are Qwen3 causal LMs (``Qwen3ForCausalLM``), small enough to train on two CPU cores in
minutes: hidden 128, 2 layers, 4 heads × head_dim 32 (vLLM's CPU backend needs head_dim ≥ 32),
MLP 512, tied embeddings — about 0.56M parameters with the ~150-token vocabulary.

Training is plain supervised fine-tuning on ``prompt + response + EOS`` with the loss on the
response tokens (and the EOS) only, AdamW, linear warm-up then cosine decay. Everything that is
random (initial weights, batch order) comes from one seed, so a build is reproducible on the
same machine and thread count.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from tcopd.progress import Event, Progress


@dataclass(frozen=True)
class ModelSize:
    hidden: int
    layers: int
    heads: int
    head_dim: int
    mlp: int


MODEL_SIZES = {
    "full": ModelSize(hidden=128, layers=2, heads=4, head_dim=32, mlp=512),
    "small": ModelSize(hidden=64, layers=1, heads=2, head_dim=32, mlp=128),
}


def new_model(tokenizer, size: str, seed: int, max_positions: int = 256):
    """A freshly initialised Qwen3ForCausalLM (float32) for ``tokenizer``'s vocabulary."""

    s = MODEL_SIZES[size]
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=s.hidden,
        intermediate_size=s.mlp,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.heads,
        head_dim=s.head_dim,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config).float()


def encode(
    tokenizer, prompts: Sequence[str], responses: Sequence[str]
) -> list[tuple[list[int], int]]:
    """``(prompt_ids + response_ids + [eos], len(prompt_ids))`` per example."""
    p_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [(p + r + [eos], len(p)) for p, r in zip(p_ids, r_ids, strict=False)]


def _batch(examples: list[tuple[list[int], int]], pad_id: int):
    width = max(len(ids) for ids, _ in examples)
    ids_BT = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels_BT = torch.full((len(examples), width), -100, dtype=torch.long)
    mask_BT = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(examples):
        ids_BT[i, : len(ids)] = torch.tensor(ids)
        labels_BT[i, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
        mask_BT[i, : len(ids)] = 1
    return ids_BT, mask_BT, labels_BT


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 10 % of ``lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def train_sft(
    model,
    examples: list[tuple[list[int], int]],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    pad_id: int,
    warmup: int = 20,
    progress: Progress | None = None,
    label: str = "train",
    stop_after: int | None = None,
) -> list[float]:
    """Supervised training on response tokens; returns the loss of every step.

    ``stop_after`` runs only the first that many steps of the ``steps``-step schedule (the
    learning rate still warms up and decays over ``steps``): a prefix of the full run, step for
    step, which the recipe test (tests/test_toy_recipe.py) checks in seconds.
    """
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    model.train()
    losses = []
    order: list[int] = []
    for step in range(steps if stop_after is None else min(stop_after, steps)):
        if len(order) < batch_size:  # reshuffle: every example seen once per epoch
            extra = list(range(len(examples)))
            rng.shuffle(extra)
            order += extra
        idx, order = order[:batch_size], order[batch_size:]
        ids_BT, mask_BT, labels_BT = _batch([examples[i] for i in idx], pad_id)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup)
        loss = model(input_ids=ids_BT, attention_mask=mask_BT, labels=labels_BT).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if progress is not None:
            progress(Event(label, step + 1, steps))
    model.eval()
    return losses

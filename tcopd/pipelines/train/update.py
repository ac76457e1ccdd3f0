"""Phase 5, the update: PPO epochs × mini-batches of clipped-loss steps through DeepSpeed (SPEC §1).

Algorithm choices:

- The advantage is computed once per batch and held fixed over all PPO epochs / mini-batches;
  ``lp_old`` is the rollout-time value.
- Each mini-batch is normalised by its *global* totals (tokens or sequences, summed over ranks),
  so the gradient does not depend on how micro-batches are cut (``train_token_budget``), nor on
  the number of ranks: DeepSpeed averages gradients over ranks, and the loss is multiplied by the
  world size to restore the global normaliser.
- Every rank runs the same number of forward/backward passes (ZeRO's collectives need it): a rank
  with fewer micro-batches runs zero-loss dummies.
- A non-finite loss or gradient norm is an error (the caller names the step; the last checkpoint
  on disk stays intact), never a silent corrupt update.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from tcopd.core.batching import plan_padded
from tcopd.core.objective import PPOLoss
from tcopd.errors import TrainingError
from tcopd.runtime.distributed import Reduce
from tcopd.runtime.forward import model_response_logprobs

if TYPE_CHECKING:
    from tcopd.runtime.engine import TrainEngine


@dataclass(frozen=True)
class UpdateSettings:
    """How a batch is cut into optimizer steps and forwards (bound once at set-up)."""

    epochs: int = 1
    mini_batches: int = 1
    token_budget: int = 16384  # padded tokens per micro-batch forward
    chunk_size: int = 512
    temperature: float = 1.0  # π_θ is scored at the rollout temperature


@dataclass
class UpdateBatch:
    """Everything the update needs, per response (B responses, T = longest response)."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    mask_BT: torch.Tensor
    old_logp_BT: torch.Tensor
    adv_BT: torch.Tensor
    is_weight_BT: torch.Tensor | None


def ppo_update(
    engine: TrainEngine,
    batch: UpdateBatch,
    loss_fn: PPOLoss,
    settings: UpdateSettings,
    seed: int,
    reduce: Reduce,
) -> dict[str, float]:
    """Run the update; returns the mean over optimizer steps of loss, clip fraction, approx. KL
    and gradient norm, plus the number of optimizer steps taken."""
    rng = random.Random(seed)
    sums = {"loss": 0.0, "clip_fraction": 0.0, "approx_kl": 0.0, "grad_norm": 0.0}
    updates = 0
    engine.train()
    for _ in range(settings.epochs):
        order = list(range(len(batch.response_ids)))
        rng.shuffle(order)
        for m in range(settings.mini_batches):
            stats = _mini_batch(
                engine, batch, order[m :: settings.mini_batches], loss_fn, settings, reduce
            )
            if stats is None:  # fewer responses than mini-batches: nothing to update on
                continue
            for k in sums:
                sums[k] += stats[k]
            updates += 1
    return {k: v / max(updates, 1) for k, v in sums.items()} | {"updates": float(updates)}


def _mini_batch(
    engine: TrainEngine,
    batch: UpdateBatch,
    mb: list[int],
    loss_fn: PPOLoss,
    settings: UpdateSettings,
    reduce: Reduce,
) -> dict[str, float] | None:
    """One optimizer step on responses ``mb`` (this rank's share); None when every rank's is empty."""
    totals = reduce.sum({"tokens": float(batch.mask_BT[mb].sum()), "seqs": float(len(mb))})
    if totals["seqs"] == 0:
        return None
    lengths = [len(batch.prompt_ids[i]) + len(batch.response_ids[i]) for i in mb]
    plan = [[mb[j] for j in g] for g in plan_padded(lengths, settings.token_budget)] if mb else []
    n_micro = engine.max_over_ranks(len(plan))
    local = {"loss": 0.0, "clip": 0.0, "kl": 0.0}
    for k in range(n_micro):
        real = k < len(plan)
        idx = plan[k] if real else (plan[0] if plan else [0])
        loss, st, ntok = _micro_batch_loss(engine, batch, idx, loss_fn, settings, totals)
        # DeepSpeed averages gradients over ranks; × world restores the global normaliser.
        loss = loss * reduce.world_size * (1.0 if real else 0.0)
        if not torch.isfinite(loss):
            raise TrainingError("non-finite loss in a PPO micro-batch")
        engine.backward(loss)
        if real:
            local["loss"] += loss.item() / reduce.world_size
            local["clip"] += st["clip_fraction"].item() * ntok
            local["kl"] += st["approx_kl"].item() * ntok
    grad_norm = engine.step()
    if grad_norm is not None and not math.isfinite(grad_norm):
        raise TrainingError(
            f"non-finite gradient norm ({grad_norm}) in a PPO update: the weights in memory are "
            "not saved"
        )
    total = reduce.sum(local)
    n = max(totals["tokens"], 1.0)
    return {
        "loss": total["loss"],
        "clip_fraction": total["clip"] / n,
        "approx_kl": total["kl"] / n,
        "grad_norm": grad_norm if grad_norm is not None else float("nan"),
    }


def _micro_batch_loss(
    engine: TrainEngine,
    batch: UpdateBatch,
    idx: list[int],
    loss_fn: PPOLoss,
    settings: UpdateSettings,
    totals: dict[str, float],
) -> tuple[torch.Tensor, dict[str, torch.Tensor], float]:
    """π_θ's forward on responses ``idx`` and their loss under the mini-batch's global totals."""
    T = max(len(batch.response_ids[i]) for i in idx)
    new_BT = model_response_logprobs(
        engine.module,
        [batch.prompt_ids[i] for i in idx],
        [batch.response_ids[i] for i in idx],
        settings.chunk_size,
        temperature=settings.temperature,
    )
    dev = new_BT.device
    mask = batch.mask_BT[idx, :T].to(dev)
    isw = batch.is_weight_BT[idx, :T].to(dev) if batch.is_weight_BT is not None else None
    loss, st = loss_fn(
        new_BT,
        batch.old_logp_BT[idx, :T].to(dev),
        batch.adv_BT[idx, :T].to(dev),
        mask,
        isw,
        num_tokens=totals["tokens"],
        num_seqs=totals["seqs"],
    )
    return loss, st, float(mask.sum())

"""One TC-OPD step, phase by phase: score → advantages → PPO updates (SPEC §1).

Algorithm choices:

- π_old is the student *at rollout time*, scored once by the trainer (not the rollout engine's
  log-probs, which differ slightly); the engine's log-probs only enter the truncated importance
  weight ``min(exp(lp_old − lp_rollout), cap)``.
- The advantage is computed once per batch and held fixed over all PPO epochs / mini-batches.
- Each mini-batch is normalised by its *global* totals (tokens or sequences, summed over ranks),
  so the gradient does not depend on how micro-batches are cut, nor on the number of ranks.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from tcopd.core.batching import plan_padded
from tcopd.core.objective import (
    advantage,
    contrastive_reward,
    outcome_bonus,
    policy_loss,
    teacher_weights,
)
from tcopd.errors import TrainingError
from tcopd.runtime.scorer import model_response_logprobs


def pad_right(rows: Sequence[torch.Tensor | Sequence[float]], T: int) -> torch.Tensor:
    """Stack 1-D float rows into ``(B, T)``, zero-padded on the right."""
    out = torch.zeros(len(rows), T, dtype=torch.float32)
    for b, r in enumerate(rows):
        r = torch.as_tensor(r, dtype=torch.float32)
        out[b, : r.numel()] = r
    return out


@dataclass
class Batch:
    """Everything the update needs, per response (B responses, T = longest response)."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    mask_BT: torch.Tensor
    old_logp_BT: torch.Tensor
    adv_BT: torch.Tensor
    is_weight_BT: torch.Tensor | None


def compute_advantages(
    teacher_logp_KBT: torch.Tensor,
    ref_logp_BT: torch.Tensor,
    old_logp_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    lam_BK: torch.Tensor,
    normalization: str,
    beta: float,
    correct_B: torch.Tensor | None = None,
    group_B: torch.Tensor | None = None,
    outcome_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(reward_BT, adv_BT)``; see core/objective.py for each equation."""
    w_BK = teacher_weights(lam_BK, normalization)  # type: ignore[arg-type]
    reward_BT = contrastive_reward(teacher_logp_KBT, ref_logp_BT, w_BK) * mask_BT
    bonus_B = None
    if outcome_weight and correct_B is not None and group_B is not None:
        bonus_B = outcome_bonus(correct_B, group_B, outcome_weight)
    adv_BT = advantage(reward_BT, old_logp_BT, ref_logp_BT, mask_BT, beta, bonus_B)
    for name, t in (("reward", reward_BT), ("advantage", adv_BT), ("old log-prob", old_logp_BT)):
        if not torch.isfinite(t).all():
            raise TrainingError(f"non-finite {name} in this batch")
    return reward_BT, adv_BT


def old_policy_logprobs(
    model: torch.nn.Module,
    prompts: list[list[int]],
    responses: list[list[int]],
    token_budget: int,
    chunk_size: int,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """π_old's log-probs and per-token entropies of each response (no grad), micro-batched."""
    logp: list[torch.Tensor] = [torch.empty(0)] * len(responses)
    ent: list[torch.Tensor] = [torch.empty(0)] * len(responses)
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for idx in plan_padded(lengths, token_budget):
            lp_BT, ent_BT = model_response_logprobs(
                model,
                [prompts[i] for i in idx],
                [responses[i] for i in idx],
                chunk_size,
                return_entropy=True,
            )
            for row, i in enumerate(idx):
                n = len(responses[i])
                logp[i] = lp_BT[row, :n].cpu()
                ent[i] = ent_BT[row, :n].cpu()
    model.train(was_training)
    return logp, ent


def ppo_update(
    engine,  # tcopd.runtime.engine.TrainEngine (no import: keeps deepspeed out of this module)
    batch: Batch,
    *,
    epochs: int,
    mini_batches: int,
    token_budget: int,
    chunk_size: int,
    clip_eps: float,
    clip_eps_high: float | None,
    dual_clip: float | None,
    aggregation: str,
    seed: int,
    world_size: int = 1,
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    step: int = 0,
) -> dict[str, float]:
    """PPO epochs × mini-batches of clipped-loss updates through the DeepSpeed engine."""
    B = len(batch.response_ids)
    rng = random.Random(seed)
    sums = {"loss": 0.0, "clip_fraction": 0.0, "approx_kl": 0.0, "grad_norm": 0.0}
    updates = 0
    engine.train()
    for _ in range(epochs):
        order = list(range(B))
        rng.shuffle(order)
        for m in range(mini_batches):
            mb = order[m::mini_batches]
            # Global normalisers (summed over ranks): the objective's N or B for this mini-batch.
            totals = all_reduce_sum(
                torch.tensor([float(batch.mask_BT[mb].sum()), float(len(mb))], dtype=torch.float64)
            )
            n_tokens, n_seqs = float(totals[0]), float(totals[1])
            if (
                n_seqs == 0
            ):  # fewer responses than mini-batches: nothing to update on (all ranks agree)
                continue
            lengths = [len(batch.prompt_ids[i]) + len(batch.response_ids[i]) for i in mb]
            plan = [[mb[j] for j in g] for g in plan_padded(lengths, token_budget)] if mb else []
            # Every rank must run the same number of forward/backward passes (ZeRO collectives).
            n_micro = engine.max_over_ranks(len(plan))
            stat = torch.zeros(3, dtype=torch.float64)
            for k in range(n_micro):
                real = k < len(plan)
                idx = plan[k] if real else (plan[0] if plan else [0])
                T = max(len(batch.response_ids[i]) for i in idx)
                new_BT = model_response_logprobs(
                    engine.module,
                    [batch.prompt_ids[i] for i in idx],
                    [batch.response_ids[i] for i in idx],
                    chunk_size,
                )
                mask = batch.mask_BT[idx, :T].to(new_BT.device)
                isw = (
                    batch.is_weight_BT[idx, :T].to(new_BT.device)
                    if batch.is_weight_BT is not None
                    else None
                )
                loss, st = policy_loss(
                    new_BT,
                    batch.old_logp_BT[idx, :T].to(new_BT.device),
                    batch.adv_BT[idx, :T].to(new_BT.device),
                    mask,
                    clip_eps,
                    clip_eps_high,
                    dual_clip,
                    isw,
                    aggregation,  # type: ignore[arg-type]
                    num_tokens=n_tokens,
                    num_seqs=n_seqs,
                )
                # DeepSpeed averages gradients over ranks; × world restores the global normaliser.
                loss = loss * world_size * (1.0 if real else 0.0)
                if not torch.isfinite(loss):
                    raise TrainingError(f"step {step}: non-finite loss in a PPO micro-batch")
                engine.backward(loss)
                if real:
                    ntok = float(mask.sum())
                    stat += torch.tensor(
                        [
                            loss.item() / world_size,
                            st["clip_fraction"].item() * ntok,
                            st["approx_kl"].item() * ntok,
                        ],
                        dtype=torch.float64,
                    )
            grad_norm = engine.step()
            stat = all_reduce_sum(stat)
            sums["loss"] += float(stat[0])
            sums["clip_fraction"] += float(stat[1]) / max(n_tokens, 1.0)
            sums["approx_kl"] += float(stat[2]) / max(n_tokens, 1.0)
            sums["grad_norm"] += grad_norm
            updates += 1
    return {k: v / max(updates, 1) for k, v in sums.items()} | {"updates": float(updates)}

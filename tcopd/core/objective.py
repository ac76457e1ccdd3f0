"""The TC-OPD objective: contrastive reward, advantage, clipped policy loss (docs/algorithm.md).

Shape legend (docs/algorithm.md): K teachers, B responses, T response tokens (padded),
``mask_BT`` is 1.0 on real response tokens and 0.0 on padding.

Everything here is a pure function of tensors. The advantage is computed once per batch of
rollouts, detached, and then held fixed across the PPO epochs on that batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Normalization = Literal["active", "all", "none"]
Aggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]
NORMALIZATIONS: tuple[str, ...] = ("active", "all", "none")
AGGREGATIONS: tuple[str, ...] = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")
# |lp_θ − lp_old| is clamped to this before exp (verl's value): one token with old = −95 and
# new = −2 would otherwise overflow exp in the backward and turn its gradient into NaN.
LOG_RATIO_CLAMP = 20.0


def teacher_weights(lambdas: torch.Tensor, normalization: Normalization = "active") -> torch.Tensor:
    """Per-teacher weights ``w_k = λ_k / K_eff`` of the reward (paper eq. 11, docs/algorithm.md).

    ``lambdas`` is ``lam_K`` (one λ per teacher) or ``lam_BK`` (a row per response, for the
    multi-task Λ[domain, teacher] table). ``K_eff`` is, per row:

    - ``active``: the number of teachers with λ ≠ 0 (so (1.5, 0.0) is exactly G-OPD(1.5));
    - ``all``: every configured teacher (the paper's literal 1/K);
    - ``none``: 1 (a plain sum).
    """
    lam = lambdas.to(torch.float64) if lambdas.dtype == torch.float64 else lambdas.float()
    if normalization == "active":
        k_eff = (lam != 0).sum(dim=-1, keepdim=True).clamp(min=1)
    elif normalization == "all":
        k_eff = torch.full_like(lam[..., :1], lam.shape[-1])
    elif normalization == "none":
        k_eff = torch.ones_like(lam[..., :1])
    else:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    return lam / k_eff


def contrastive_reward(
    teacher_logp_KBT: torch.Tensor, ref_logp_BT: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Per-token teacher-contrastive reward ``r(t) = Σ_k w_k · (lp_k(t) − lp_ref(t))`` (eq. 11).

    ``weights`` is ``w_K`` or ``w_BK`` from :func:`teacher_weights` (λ_k / K_eff).
    Returns ``reward_BT``. Padding positions carry whatever the inputs carry; mask downstream.
    """
    d_KBT = teacher_logp_KBT - ref_logp_BT.unsqueeze(0)
    if weights.dim() == 1:
        w_KB1 = weights.view(-1, 1, 1)
    else:
        w_KB1 = weights.transpose(0, 1).unsqueeze(-1)
    return (w_KB1.to(d_KBT.dtype) * d_KBT).sum(dim=0)


def advantage(
    reward_BT: torch.Tensor,
    old_logp_BT: torch.Tensor,
    ref_logp_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    beta: float = 1.0,
    outcome_B: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token advantage ``A(t) = r(t) − β·(lp_old(t) − lp_ref(t)) [+ o_b]`` (docs/algorithm.md).

    Undiscounted, not normalised, detached. ``outcome_B`` (optional) is a per-response bonus
    added to every token of that response (see :func:`outcome_bonus`). Zero on padding.
    """
    adv_BT = reward_BT - beta * (old_logp_BT - ref_logp_BT)
    if outcome_B is not None:
        adv_BT = adv_BT + outcome_B.to(adv_BT.dtype).unsqueeze(-1)
    return (adv_BT * mask_BT).detach()


def outcome_bonus(correct_B: torch.Tensor, group_B: torch.Tensor, weight: float) -> torch.Tensor:
    """``w · (R(y_b) − mean_{b' in group(b)} R(y_b'))``: the optional outcome reward (docs/algorithm.md).

    ``correct_B`` is 0/1 (ungraded counts as 0), ``group_B`` an integer id of the prompt each
    response was sampled for, so the baseline is the mean over that prompt's samples.
    """
    r_B = correct_B.to(torch.float64)
    _, inverse = torch.unique(group_B, return_inverse=True)
    n_groups = int(inverse.max().item()) + 1 if inverse.numel() else 0
    sums = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, inverse, r_B)
    counts = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, inverse, torch.ones_like(r_B))
    return (weight * (r_B - (sums / counts)[inverse])).to(torch.float32)


def truncated_is_weight(
    old_logp_BT: torch.Tensor, rollout_logp_BT: torch.Tensor, cap: float = 5.0
) -> torch.Tensor:
    """Truncated importance weight ``min(exp(lp_old_trainer − lp_rollout), cap)``, detached.

    Corrects for the rollout engine's log-probs differing from the trainer's (G-OPD / verl).
    """
    return torch.exp(old_logp_BT - rollout_logp_BT).clamp(max=cap).detach()


def aggregate(
    loss_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    mode: Aggregation = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
) -> torch.Tensor:
    """Reduce per-token losses to a scalar.

    - ``token-mean``: ``Σ_bt m·l / N`` with N the number of response tokens;
    - ``seq-mean-token-mean``: ``(1/B) Σ_b (Σ_t m·l / Σ_t m)``;
    - ``seq-mean-token-sum``: ``(1/B) Σ_b Σ_t m·l``.

    ``num_tokens`` / ``num_seqs`` override N / B, so that a mini-batch split into micro-batches
    is normalised by the mini-batch's totals and the summed gradient does not depend on the
    micro-batch size.
    """
    masked = loss_BT * mask_BT
    if mode == "token-mean":
        n = mask_BT.sum() if num_tokens is None else num_tokens
        return masked.sum() / n
    b = float(mask_BT.shape[0]) if num_seqs is None else num_seqs
    if mode == "seq-mean-token-mean":
        per_seq = masked.sum(-1) / mask_BT.sum(-1).clamp(min=1)
    elif mode == "seq-mean-token-sum":
        per_seq = masked.sum(-1)
    else:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {mode!r}")
    return per_seq.sum() / b


def clipped_policy_loss(
    new_logp_BT: torch.Tensor,
    old_logp_BT: torch.Tensor,
    adv_BT: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = 3.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO clipped surrogate loss with dual-clip (docs/algorithm.md).

    ``ρ = exp(clamp(lp_θ − lp_old, ±20))`` (:data:`LOG_RATIO_CLAMP`); objective ``o = min(ρA, clip(ρ, 1−ε, 1+ε_high)A)``; for A < 0 the
    loss is further capped at ``−c·A`` (dual-clip, c = ``dual_clip``). Returns
    ``(loss_BT, clipped_BT)`` with ``loss = −o`` and a 0/1 map of tokens whose gradient was
    clipped away (by either clip).
    """
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    log_ratio_BT = (new_logp_BT - old_logp_BT).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio_BT = torch.exp(log_ratio_BT)
    loss_unclipped = -adv_BT * ratio_BT
    loss_clipped = -adv_BT * ratio_BT.clamp(1.0 - clip_eps, 1.0 + eps_high)
    loss_BT = torch.maximum(loss_unclipped, loss_clipped)
    clipped_BT = (loss_clipped > loss_unclipped).float()
    if dual_clip is not None:
        loss_cap = -adv_BT * dual_clip
        dual_BT = (adv_BT < 0) & (loss_BT > loss_cap)
        loss_BT = torch.where(dual_BT, loss_cap, loss_BT)
        clipped_BT = torch.where(dual_BT, torch.ones_like(clipped_BT), clipped_BT)
    return loss_BT, clipped_BT


def policy_loss(
    new_logp_BT: torch.Tensor,
    old_logp_BT: torch.Tensor,
    adv_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = 3.0,
    is_weight_BT: torch.Tensor | None = None,
    aggregation: Aggregation = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss the trainer minimises: ``aggregate(is_weight · clipped_loss)``.

    ``is_weight_BT`` is the detached truncated importance weight (None: 1). Returns the scalar
    loss and detached statistics (clip fraction, mean ratio, approx. KL to the old policy) over
    the unmasked tokens.
    """
    loss_BT, clipped_BT = clipped_policy_loss(
        new_logp_BT, old_logp_BT, adv_BT, clip_eps, clip_eps_high, dual_clip
    )
    if is_weight_BT is not None:
        loss_BT = loss_BT * is_weight_BT.detach()
    loss = aggregate(loss_BT, mask_BT, aggregation, num_tokens, num_seqs)
    with torch.no_grad():
        n = mask_BT.sum().clamp(min=1)
        log_ratio = (new_logp_BT - old_logp_BT).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP) * mask_BT
        stats = {
            "clip_fraction": (clipped_BT * mask_BT).sum() / n,
            "ratio_mean": (torch.exp(log_ratio) * mask_BT).sum() / n,
            # k3 estimator of KL(old || new), non-negative: E[(ρ − 1) − log ρ]
            "approx_kl": ((torch.exp(log_ratio) - 1 - log_ratio) * mask_BT).sum() / n,
        }
    return loss, stats


@dataclass(frozen=True)
class PPOLoss:
    """The clipped-loss settings bound once (torchtune's ``PPOLoss(epsilon=…)``), tensors per call.

    ``loss, stats = PPOLoss(clip_eps=0.2)(new_logp_BT, old_logp_BT, adv_BT, mask_BT)`` is
    :func:`policy_loss` with these settings.
    """

    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    dual_clip: float | None = 3.0
    aggregation: Aggregation = "token-mean"

    def __call__(
        self,
        new_logp_BT: torch.Tensor,
        old_logp_BT: torch.Tensor,
        adv_BT: torch.Tensor,
        mask_BT: torch.Tensor,
        is_weight_BT: torch.Tensor | None = None,
        num_tokens: float | None = None,
        num_seqs: float | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return policy_loss(
            new_logp_BT,
            old_logp_BT,
            adv_BT,
            mask_BT,
            self.clip_eps,
            self.clip_eps_high,
            self.dual_clip,
            is_weight_BT,
            self.aggregation,
            num_tokens,
            num_seqs,
        )

"""Phase 5, the update: epochs × mini-batches of optimizer steps through DeepSpeed (docs/algorithm.md).

The loss is the PPO clipped loss on the sampled tokens (``--loss sampled``, core/objective.py)
or the dense β·KL(π_θ ‖ p*) at every position (``--loss dense``, core/dense.py).

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
  on disk stays intact), never a silent corrupt update. Every rank checks its loss before each
  backward and all ranks stop together when any rank's is not finite.
- On-policy (one epoch, one mini-batch: a single optimizer step per batch) π_old *is* π_θ at
  the time of the update, so its log-probs are taken from the update's own forward, detached
  (as verl does), instead of a separate forward: the update takes the advantage without its
  ``−β·lp_old`` term (``OpenSignal``), ``batch.on_policy`` carries what that term and the IS
  weight need, and the update returns π_old and its entropy (:class:`Updated`).
- The dense loss has no ratio: its ``clip_fraction`` and ``approx_kl`` are ``None`` (null in
  metrics.jsonl), not 0.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from tcopd.core.batching import plan_padded
from tcopd.core.dense import Head, dense_kl
from tcopd.core.dense_support import ServedRows, support_dense_loss
from tcopd.core.objective import PPOLoss, aggregate, truncated_is_weight
from tcopd.core.signal import OpenSignal, pad_right
from tcopd.errors import TrainingError
from tcopd.runtime.scoring.forward import model_response_logprobs, response_hidden_states
from tcopd.runtime.training.distributed import Reduce

if TYPE_CHECKING:
    from tcopd.core.signal import Signal
    from tcopd.pipelines.train.rollout import Rollouts
    from tcopd.pipelines.train.score import Scores
    from tcopd.pipelines.train.setup import Trainer
    from tcopd.runtime.training.learner import Learner


@dataclass(frozen=True)
class UpdateSettings:
    """How a batch is cut into optimizer steps and forwards (bound once at set-up)."""

    epochs: int = 1
    mini_batches: int = 1
    token_budget: int = 16384  # padded tokens per micro-batch forward
    chunk_size: int = 512
    temperature: float = 1.0  # π_θ is scored at the rollout temperature


@dataclass
class OnPolicy:
    """π_old from the update's forward: ``A = adv_BT − β·lp_old``, IS weight per micro-batch."""

    beta: float
    rollout_logp_BT: torch.Tensor | None  # the engine's sampling log-probs (None: no IS weight)
    is_cap: float
    old_logp_BT: torch.Tensor  # filled by the update
    entropy_BT: torch.Tensor  # filled by the update


@dataclass
class DenseTargets:
    """What the dense loss needs besides π_θ: every teacher's (and π_ref's, unless it cancels)
    final hidden states per response (``T_i × H``) and output heads, and the weights ``w_BK``."""

    names: tuple[str, ...]  # active teachers, in the order of w_BK's columns
    hidden: dict[str, list[torch.Tensor]]  # + "reference" when π_ref is needed
    heads: dict[str, Head]
    w_BK: torch.Tensor
    beta: float
    vocab_size: int | None = None  # the tokenizer's size: head rows past it take no part
    # served teachers (a subset of names): per response their common top-k support; the loss is
    # then core/dense_support.py's (exact on the support, sampled outside it)
    served: list[ServedRows] | None = None
    served_names: tuple[str, ...] = ()


@dataclass
class UpdateBatch:
    """Everything the update needs, per response (B responses, T = longest response).

    With ``on_policy`` set, ``old_logp_BT`` is None and ``adv_BT`` lacks the ``−β·lp_old`` term.
    """

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    mask_BT: torch.Tensor
    old_logp_BT: torch.Tensor | None
    adv_BT: torch.Tensor
    is_weight_BT: torch.Tensor | None
    on_policy: OnPolicy | None = None
    dense: DenseTargets | None = None  # set: the dense loss instead of the clipped one


def is_on_policy(settings: UpdateSettings) -> bool:
    """One optimizer step per batch: π_old is π_θ at update time."""
    return settings.epochs == 1 and settings.mini_batches == 1


@dataclass(frozen=True)
class Updated:
    """What the update phase returns: its statistics (:func:`ppo_update`) and, on-policy,
    π_old's log-probs and entropies per response, from the update's own forward."""

    stats: dict[str, float | None]
    old: list[torch.Tensor] | None = None
    entropy: list[torch.Tensor] | None = None


def update(
    tr: Trainer,
    batch: Rollouts,
    scores: Scores,
    signal: Signal | OpenSignal,
    is_BT: torch.Tensor | None,
    seed: int,
) -> Updated:
    """The update phase: on-policy (``signal`` an :class:`OpenSignal`, π_old unknown until the
    update's forward) it returns π_old and its entropies too."""
    on_policy = None
    old_BT = None
    if isinstance(signal, OpenSignal):
        comps = batch.completions
        rollout_BT = None
        if tr.cfg.truncated_is and all(c.logprobs is not None for c in comps):
            rollout_BT = pad_right([c.logprobs for c in comps], signal.mask_BT.shape[1])
        zeros = torch.zeros_like(signal.mask_BT)
        on_policy = OnPolicy(tr.cfg.beta, rollout_BT, tr.cfg.is_cap, zeros, zeros.clone())
        is_BT = None
    else:
        old_BT = signal.old_BT
    dense = None
    if tr.cfg.loss == "dense":
        assert scores.hidden is not None and scores.heads is not None
        dense = DenseTargets(
            signal.names,
            scores.hidden,
            scores.heads,
            signal.w_BK,
            tr.cfg.beta,
            tr.vocab_size,
            scores.served,
            scores.served_names,
        )
    stats = ppo_update(
        tr.learner,
        UpdateBatch(
            batch.prompts,
            batch.responses,
            signal.mask_BT,
            old_BT,
            signal.adv_BT,
            is_BT,
            on_policy,
            dense,
        ),
        tr.loss_fn,
        tr.update,
        seed,
        tr.reduce,
    )
    if on_policy is None:
        return Updated(stats)
    lengths = [len(r) for r in batch.responses]
    return Updated(
        stats,
        [on_policy.old_logp_BT[b, :n] for b, n in enumerate(lengths)],
        [on_policy.entropy_BT[b, :n] for b, n in enumerate(lengths)],
    )


def ppo_update(
    learner: Learner,
    batch: UpdateBatch,
    loss_fn: PPOLoss,
    settings: UpdateSettings,
    seed: int,
    reduce: Reduce,
) -> dict[str, float]:
    """Run the update; returns the mean over optimizer steps of loss, clip fraction, approx. KL
    and gradient norm, plus the number of optimizer steps taken (the dense loss has no ratio:
    its clip fraction and approx. KL are None)."""
    rng = random.Random(seed)
    sums = {"loss": 0.0, "clip_fraction": 0.0, "approx_kl": 0.0, "grad_norm": 0.0}
    updates = 0
    learner.train()
    for _ in range(settings.epochs):
        order = list(range(len(batch.response_ids)))
        rng.shuffle(order)
        for m in range(settings.mini_batches):
            stats = _mini_batch(
                learner, batch, order[m :: settings.mini_batches], loss_fn, settings, reduce
            )
            if stats is None:  # fewer responses than mini-batches: nothing to update on
                continue
            for k in stats:
                sums[k] = sums.get(k, 0.0) + stats[k]
            updates += 1
    out: dict[str, float | None] = {k: v / max(updates, 1) for k, v in sums.items()}
    if batch.dense is not None:
        out["clip_fraction"] = out["approx_kl"] = None
    return out | {"updates": float(updates)}


def _mini_batch(
    learner: Learner,
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
    n_micro = learner.max_over_ranks(len(plan))
    local = {"loss": 0.0, "clip": 0.0, "kl": 0.0}
    if batch.dense is not None and batch.dense.served is not None:  # the same keys on every rank
        local |= {k: 0.0 for k in SERVED_STATS}
    for k in range(n_micro):
        real = k < len(plan)
        idx = plan[k] if real else (plan[0] if plan else [0])
        loss, st, ntok = _micro_batch_loss(learner, batch, idx, loss_fn, settings, totals)
        # DeepSpeed averages gradients over ranks; × world restores the global normaliser.
        loss = loss * reduce.world_size * (1.0 if real else 0.0)
        # before backward's collectives: a rank that stopped alone would leave the others waiting
        reduce.raise_any("" if torch.isfinite(loss) else "non-finite loss in a PPO micro-batch")
        learner.backward(loss)
        if real:
            local["loss"] += loss.item() / reduce.world_size
            local["clip"] += st["clip_fraction"].item() * ntok
            local["kl"] += st["approx_kl"].item() * ntok
            for k in SERVED_STATS:
                if k in st:
                    local[k] += float(st[k])
    grad_norm = learner.step()
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
    } | {k: total[k] / n for k in SERVED_STATS if k in total}


def _micro_batch_loss(
    learner: Learner,
    batch: UpdateBatch,
    idx: list[int],
    loss_fn: PPOLoss,
    settings: UpdateSettings,
    totals: dict[str, float],
) -> tuple[torch.Tensor, dict[str, torch.Tensor], float]:
    """π_θ's forward on responses ``idx`` and their loss under the mini-batch's global totals."""
    if batch.dense is not None:
        return _dense_micro_batch_loss(learner, batch, idx, loss_fn, settings, totals)
    T = max(len(batch.response_ids[i]) for i in idx)
    on_policy = batch.on_policy is not None
    out = model_response_logprobs(
        learner.module,
        [batch.prompt_ids[i] for i in idx],
        [batch.response_ids[i] for i in idx],
        settings.chunk_size,
        temperature=settings.temperature,
        return_entropy=on_policy,
    )
    new_BT, ent_BT = out if on_policy else (out, None)
    dev = new_BT.device
    mask = batch.mask_BT[idx, :T].to(dev)
    adv = batch.adv_BT[idx, :T].to(dev)
    if batch.on_policy is not None:  # (spelled out for the type checker; = on_policy)
        old, adv, isw = _on_policy_terms(batch.on_policy, idx, T, new_BT, ent_BT, mask, adv)
    else:
        assert batch.old_logp_BT is not None
        old = batch.old_logp_BT[idx, :T].to(dev)
        isw = batch.is_weight_BT[idx, :T].to(dev) if batch.is_weight_BT is not None else None
    loss, st = loss_fn(
        new_BT,
        old,
        adv,
        mask,
        isw,
        num_tokens=totals["tokens"],
        num_seqs=totals["seqs"],
    )
    return loss, st, float(mask.sum())


def _on_policy_terms(
    op: OnPolicy,
    idx: list[int],
    T: int,
    new_BT: torch.Tensor,
    ent_BT: torch.Tensor | None,
    mask: torch.Tensor,
    partial_adv: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(lp_old, A, IS weight)`` of one micro-batch with π_old = π_θ (detached); records π_old."""
    old = new_BT.detach() * mask
    adv = (partial_adv - op.beta * old) * mask
    isw = None
    if op.rollout_logp_BT is not None:
        rollout = op.rollout_logp_BT[idx, :T].to(old.device)
        isw = truncated_is_weight(old, rollout, op.is_cap) * mask
    op.old_logp_BT[idx, :T] = old.cpu()
    if ent_BT is not None:
        op.entropy_BT[idx, :T] = (ent_BT.detach() * mask).cpu()
    return old, adv, isw


def _dense_micro_batch_loss(
    learner: Learner,
    batch: UpdateBatch,
    idx: list[int],
    loss_fn: PPOLoss,
    settings: UpdateSettings,
    totals: dict[str, float],
) -> tuple[torch.Tensor, dict[str, torch.Tensor], float]:
    """``aggregate(β·KL(π_θ ‖ p*))`` over the positions of responses ``idx`` (core/dense.py), or
    with served teachers its unbiased surrogate (core/dense_support.py)."""
    d = batch.dense
    assert d is not None
    responses = [batch.response_ids[i] for i in idx]
    hidden_NH, head = response_hidden_states(
        learner.module, [batch.prompt_ids[i] for i in idx], responses
    )
    dev = hidden_NH.device
    partitioned = hasattr(head.weight, "ds_id")  # ZeRO-3: call the head module per chunk
    student = Head(
        head.module if partitioned else head.weight,
        None if partitioned else head.bias,
        head.scale,
        head.softcap,
    )
    lengths = [len(r) for r in responses]
    rows = lambda name: torch.cat([d.hidden[name][i] for i in idx]).to(dev)  # noqa: E731
    w_NK = torch.cat([d.w_BK[i].expand(n, -1) for i, n in zip(idx, lengths)]).to(dev)
    extra: dict[str, torch.Tensor] = {}
    if d.served is not None:
        kl_N, extra = _support_loss(batch, idx, hidden_NH, student, responses, w_NK, rows, settings)
    else:
        kl_N = _dense_kl(d, hidden_NH, student, w_NK, rows, settings)
    T = max(lengths)
    mask = batch.mask_BT[idx, :T].to(dev)
    kl_BT = torch.zeros(len(idx), T, dtype=kl_N.dtype, device=dev)
    kl_BT[mask.bool()] = kl_N  # row-major: response by response, position by position
    loss = aggregate(kl_BT, mask, loss_fn.aggregation, totals["tokens"], totals["seqs"])
    if batch.on_policy is not None:  # π_old for the metrics, from this forward
        _fill_old_from_hidden(batch.on_policy, idx, T, hidden_NH, student, responses, settings)
    zero = torch.zeros((), device=dev)
    return loss, {"clip_fraction": zero, "approx_kl": zero, **extra}, float(mask.sum())


Rows = Callable[[str], torch.Tensor]
# what the dense loss with served teachers logs per step: means over the response tokens
SERVED_STATS = (
    "served_student_mass",  # π_θ's mass on the support S_t
    "served_target_mass",  # p*'s (estimated from the sampled token)
    "served_outside",  # the fraction of sampled tokens outside S_t
    "served_support",  # |S_t|
)


def _dense_kl(
    d: DenseTargets, hidden_NH: torch.Tensor, student: Head, w_NK: torch.Tensor, rows: Rows,
    settings: UpdateSettings,
) -> torch.Tensor:  # fmt: skip
    return dense_kl(
        hidden_NH,
        student,
        [rows(n) for n in d.names],
        [d.heads[n] for n in d.names],
        rows("reference") if "reference" in d.hidden else None,
        d.heads.get("reference"),
        w_NK,
        d.beta,
        settings.temperature,
        settings.chunk_size,
        vocab_size=d.vocab_size,
    )


def _support_loss(
    batch: UpdateBatch,
    idx: list[int],
    hidden_NH: torch.Tensor,
    student: Head,
    responses: list[list[int]],
    w_NK: torch.Tensor,
    rows: Rows,
    settings: UpdateSettings,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The dense loss's surrogate with served teachers (core/dense_support.py) for the positions
    of responses ``idx``, and the sums of its statistics (``SERVED_STATS``)."""
    d = batch.dense
    assert d is not None and d.served is not None
    dev = hidden_NH.device
    coef_NK = w_NK / d.beta
    local = [n for n in d.names if n not in d.served_names]
    hidden = [rows(n) for n in local]
    heads = [d.heads[n] for n in local]
    coef = [coef_NK[:, d.names.index(n)] for n in local]
    if "reference" in d.hidden:  # 1 − Σ_k w_k/β over every active teacher, served included
        hidden, heads = [rows("reference"), *hidden], [d.heads["reference"], *heads]
        coef = [1.0 - coef_NK.sum(-1), *coef]
    local_coef = torch.stack(coef, -1) if coef else coef_NK[:, :0]
    served = ServedRows(
        torch.cat([d.served[i].ids_NS for i in idx]).to(dev),
        torch.cat([d.served[i].logp_KNS for i in idx], dim=1).to(dev),
        torch.cat([d.served[i].logp_y_KN for i in idx], dim=1).to(dev),
    )
    served_coef = coef_NK[:, [d.names.index(n) for n in d.served_names]]
    targets = torch.tensor([t for r in responses for t in r], device=dev)
    old = None
    if batch.on_policy is None:
        assert batch.old_logp_BT is not None
        T = max(len(r) for r in responses)
        old = batch.old_logp_BT[idx, :T][batch.mask_BT[idx, :T].bool()].to(dev)
    loss_N, stats = support_dense_loss(
        hidden_NH, student, hidden, heads, local_coef, served, served_coef, targets, old,
        d.beta, settings.temperature, settings.chunk_size, d.vocab_size,
    )  # fmt: skip
    names = {"student_mass": 0, "target_mass": 1, "outside": 2, "support": 3}
    return loss_N, {SERVED_STATS[i]: stats[k].sum().detach() for k, i in names.items()}


def _fill_old_from_hidden(
    op: OnPolicy,
    idx: list[int],
    T: int,
    hidden_NH: torch.Tensor,
    head: Head,
    responses: list[list[int]],
    settings: UpdateSettings,
) -> None:
    """On-policy dense: π_old's sampled-token log-probs and entropies from π_θ's hidden states."""
    with torch.no_grad():
        targets = torch.tensor([t for r in responses for t in r])
        lp_N, ent_N = head.token_logprobs(
            hidden_NH.detach(), targets, settings.temperature, settings.chunk_size, True
        )
    mask = torch.zeros(len(idx), T, dtype=torch.bool)
    for row, r in enumerate(responses):
        mask[row, : len(r)] = True
    old = torch.zeros(len(idx), T)
    ent = torch.zeros(len(idx), T)
    old[mask], ent[mask] = lp_N.float().cpu(), ent_N.float().cpu()
    op.old_logp_BT[idx, :T] = old
    op.entropy_BT[idx, :T] = ent

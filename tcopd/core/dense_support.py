"""The dense loss when some teachers only say their top k: exact on a support, sampled outside it.

A served teacher (a vLLM server) gives, at each response position t, the log-probs of its k most
likely tokens and of the sampled token y_t — not its whole row. This module's loss has, for every
k, the same expected gradient as the dense loss of ``core/dense.py`` (docs/algorithm.md, "The
dense loss with served teachers"); k only sets its variance.

Shape legend as in docs/algorithm.md; S the support size (padded with ``-1``), K_s served teachers.

Per position, with every model's log-probs at the rollout temperature and ``c_m`` the target's
coefficients (``w_k/β`` for teacher k, ``1 − Σ_k w_k/β`` for π_ref):

    s_t(v) = Σ_m c_m log π_m(v|s_t)        (log p*_t = s_t − log Z_t)
    g_t(v) = log π_θ(v|s_t) − s_t(v)       (= log π_θ − log p*_t − log Z_t)

Because Σ_v ∇π_θ(v) = 0, ``∇ kl_t = β Σ_v ∇π_θ(v) (g_t(v) − b_t)`` for any b_t that does not
depend on θ's sample. Split the sum at a support S_t chosen from the prefix alone:

    ∇ kl_t = β [ Σ_{v∈S_t} ∇π_θ(v) (g_t(v) − b_t)
                 + E_{y∼π_old}[ 1{y∉S_t} · π_θ(y)/π_old(y) · (g_t(y) − b_t) · ∇log π_θ(y) ] ]

so the surrogate, whose gradient at the sampled y_t is an unbiased estimate of ``∇ kl_t``, is

    L_t = β [ Σ_{v∈S_t} π_θ(v)·sg(g_t(v) − b_t) + 1{y_t∉S_t} · π_θ(y_t)/π_old(y_t) · sg(g_t(y_t) − b_t) ]

(``sg``: no gradient). ``b_t`` is the π_θ-weighted mean of g_t over S_t (0 when S_t is empty): a
baseline that makes the sampled term small when π_θ and p* agree outside the support; any
prefix-only b_t leaves the expectation unchanged. S_t = V gives the dense gradient exactly (the
sampled term is never on); S_t = ∅ gives ``−A_t ∇log π_θ(y_t)·ρ`` with ``A_t = β(s_t(y_t) −
log π_θ(y_t))``, the sampled estimator's advantage (up to the baseline, a zero-mean term).

Every model enters s_t with its normalised log-probs (the local ones through ``log_softmax`` of
their transformed logits, ``Head.logits``; the served ones as the server returned them): a
per-position constant in s_t would cancel in expectation too, but it would add
``const·∇log π_θ(y_t)`` to every sample of the sampled term, variance for nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tcopd.core.dense import Head, over_chunks, records_grad


@dataclass(frozen=True)
class ServedRows:
    """What the served teachers said at N positions: the support ``ids_NS`` (``-1``: padding;
    the same ids for every served teacher), each served teacher's log-probs there
    (``logp_KNS``) and at the sampled token (``logp_y_KN``)."""

    ids_NS: torch.Tensor
    logp_KNS: torch.Tensor
    logp_y_KN: torch.Tensor

    def rows(self, s: int, e: int) -> ServedRows:
        return ServedRows(self.ids_NS[s:e], self.logp_KNS[:, s:e], self.logp_y_KN[:, s:e])


def _local_scores(
    hidden: Sequence[torch.Tensor],
    heads: Sequence[Head],
    coef_CM: torch.Tensor,
    temperature: float,
    like: torch.Tensor,
    vocab_size: int | None,
) -> torch.Tensor:
    """``Σ_m c_m log π_m`` over the local models, ``C × V``, no grad."""
    acc = torch.zeros_like(like)
    for m, (h, head) in enumerate(zip(hidden, heads, strict=True)):
        z = head.logits(h, temperature)
        z = z[:, :vocab_size] if vocab_size is not None else z
        acc.add_(torch.log_softmax(z, dim=-1).to(acc.dtype) * coef_CM[:, m, None].to(acc.dtype))
    return acc


def _chunk_loss(
    student_hidden_CH: torch.Tensor,
    student_head: Head,
    local_hidden: tuple[torch.Tensor, ...],
    local_heads: tuple[Head, ...],
    local_coef_CM: torch.Tensor,
    served: ServedRows,
    served_coef_CK: torch.Tensor,
    targets_C: torch.Tensor,
    old_logp_C: torch.Tensor | None,
    beta: float,
    temperature: float,
    vocab_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(L_C, π_θ's mass on S_C, p*'s mass on S_C, y outside S_C)`` for one chunk."""
    z_CV = student_head.logits(student_hidden_CH, temperature)
    if vocab_size is not None:
        z_CV = z_CV[:, :vocab_size]
    logp_CV = torch.log_softmax(z_CV, dim=-1)
    with torch.no_grad():
        local_CV = _local_scores(
            local_hidden, local_heads, local_coef_CM, temperature, logp_CV.detach(), vocab_size
        )
        # padding, and ids past the tokenizer's size (vocab_size: rows that take no part)
        valid_CS = (served.ids_NS >= 0) & (served.ids_NS < logp_CV.shape[1])
        ids_CS = served.ids_NS.clamp(0, logp_CV.shape[1] - 1)
        # a sampled id past vocab_size (a padding row, possible only in an untrained model)
        # is outside π_θ's support here: its sampled term is left out
        y_real = targets_C < logp_CV.shape[1]
        targets_C = targets_C.clamp(max=logp_CV.shape[1] - 1)
        served_S = (served_coef_CK.T.unsqueeze(-1) * served.logp_KNS.to(logp_CV.dtype)).sum(0)
        served_y = (served_coef_CK.T * served.logp_y_KN.to(logp_CV.dtype)).sum(0)
        s_CS = local_CV.gather(1, ids_CS) + served_S  # s_t on the support
        s_C = local_CV.gather(1, targets_C[:, None]).squeeze(1) + served_y  # and at y_t
        logp_det = logp_CV.detach()
        old_C = (  # on policy (None): π_old is π_θ, the ratio is 1 in value
            logp_det.gather(1, targets_C[:, None]).squeeze(1)
            if old_logp_C is None
            else old_logp_C.to(logp_det.dtype)
        )
        g_CS = logp_det.gather(1, ids_CS) - s_CS
        g_C = logp_det.gather(1, targets_C[:, None]).squeeze(1) - s_C
        p_CS = logp_det.gather(1, ids_CS).exp() * valid_CS
        mass = p_CS.sum(-1)
        b_C = torch.where(mass > 0, (p_CS * g_CS).sum(-1) / mass.clamp(min=1e-30), 0.0)
        outside_C = ~(valid_CS & (ids_CS == targets_C[:, None])).any(-1) & y_real
        # p*'s mass on S (for the logs): Σ_S e^s / Z, with Z = Σ_S e^s + Σ_{v∉S} e^s(v) and the
        # second sum estimated from the sampled token, e^s(y)/π_old(y) when y ∉ S (unbiased for
        # Z; the ratio is an estimate, exactly 1 when S_t = V)
        lse_S = torch.logsumexp(s_CS.masked_fill(~valid_CS, -torch.inf), -1)
        rest = torch.exp(s_C - old_C - lse_S) * outside_C
        target_mass = 1.0 / (1.0 + rest)
    pi_CS = logp_CV.gather(1, ids_CS).exp() * valid_CS
    support = (pi_CS * (g_CS - b_C[:, None])).sum(-1)
    y_logp = logp_CV.gather(1, targets_C[:, None]).squeeze(1)
    ratio = torch.exp(y_logp - old_C)
    tail = outside_C * ratio * (g_C - b_C)
    return beta * (support + tail), mass, target_mass, outside_C.to(mass.dtype)


def support_dense_loss(
    student_hidden_NH: torch.Tensor,
    student_head: Head,
    local_hidden: Sequence[torch.Tensor],
    local_heads: Sequence[Head],
    local_coef_NM: torch.Tensor,
    served: ServedRows,
    served_coef_NK: torch.Tensor,
    targets_N: torch.Tensor,
    old_logp_N: torch.Tensor | None,
    beta: float = 1.0,
    temperature: float = 1.0,
    chunk_size: int = 512,
    vocab_size: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(L_N, stats)``: the per-position surrogate of the module docstring, whose gradient is an
    unbiased estimate of the dense loss's, and per position ``student_mass`` (π_θ's mass on
    S_t), ``target_mass`` (an estimate of p*'s mass on S_t, from the sampled token), ``outside``
    (1 where y_t ∉ S_t) and ``support`` (|S_t|).

    ``local_hidden`` / ``local_heads``: the models scored here (π_ref and local teachers), with
    coefficients ``local_coef_NM`` (``1 − Σ_k w_k/β`` for π_ref, ``w_k/β`` for a teacher);
    ``served``: the served teachers' support rows, coefficients ``served_coef_NK``; ``targets_N``
    the sampled tokens y_t, ``old_logp_N`` their log-probs under π_old at temperature τ (None:
    on policy, π_old = π_θ). Each
    chunk of ``chunk_size`` positions is checkpointed when autograd records.
    """
    N = student_hidden_NH.shape[0]
    if (
        served.ids_NS.shape[0] != N
        or targets_N.shape[0] != N
        or (old_logp_N is not None and old_logp_N.shape[0] != N)
    ):
        raise ValueError(f"served rows, targets and old log-probs must have N = {N} rows")
    if not beta > 0:
        raise ValueError(f"beta must be > 0 (the target divides by it), got {beta}")
    parts = over_chunks(
        _chunk_loss,
        N,
        chunk_size,
        records_grad(student_hidden_NH, student_head),
        lambda s, e: (
            student_hidden_NH[s:e],
            student_head,
            tuple(h[s:e] for h in local_hidden),
            tuple(local_heads),
            local_coef_NM[s:e],
            served.rows(s, e),
            served_coef_NK[s:e],
            targets_N[s:e],
            None if old_logp_N is None else old_logp_N[s:e],
            float(beta),
            float(temperature),
            vocab_size,
        ),
    )
    if not parts:
        empty = student_hidden_NH.new_zeros((0,), dtype=torch.float32)
        return empty, {k: empty for k in ("student_mass", "target_mass", "outside", "support")}
    loss, mass, target_mass, outside = (torch.cat(x) for x in zip(*parts))
    stats = {
        "student_mass": mass,
        "target_mass": target_mass,
        "outside": outside,
        "support": (served.ids_NS >= 0).sum(-1).to(mass.dtype),  # as the servers gave it
    }
    return loss, stats


def common_support(
    ids_KTk: torch.Tensor, logp_KTk: torch.Tensor, logp_y_KT: torch.Tensor
) -> ServedRows:
    """The served teachers' common support at T positions: ``S_t`` = the intersection of their
    top-k id sets (in the first teacher's rank order, padded with ``-1`` to k columns), each
    teacher's log-probs there, and theirs at the sampled token. ``ids_KTk`` / ``logp_KTk``: each
    teacher's top k; no teacher's entry is ever filled in for a token it did not return."""
    K, T, k = ids_KTk.shape
    first = ids_KTk[0]
    V = int(ids_KTk.max()) + 1 if ids_KTk.numel() else 1
    keep = torch.ones(T, k, dtype=torch.bool)
    logp = torch.zeros(K, T, k, dtype=logp_KTk.dtype)
    for j in range(K):  # each teacher's row over the ids it returned (O(T·V), not O(T·k²))
        has = torch.zeros(T, V, dtype=torch.bool).scatter_(1, ids_KTk[j], True)
        row = torch.zeros(T, V, dtype=logp_KTk.dtype).scatter_(1, ids_KTk[j], logp_KTk[j])
        keep &= has.gather(1, first)
        logp[j] = row.gather(1, first)
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices  # kept ids first
    ids = torch.where(keep, first, -1).gather(1, order)
    logp = logp.gather(2, order.expand(K, T, k)).masked_fill(ids[None] < 0, 0.0)
    return ServedRows(ids, logp, logp_y_KT)

"""The training signal, in one place: scored log-probs → ``(mask, old, ref, teacher, reward, A)``.

``tcopd train``, ``tcopd score`` and the GPU check all call :func:`training_signal`, so the
reward a run trains on is, token for token, the reward ``tcopd score`` writes (docs/algorithm.md).

Per token t of response b (shape legend in docs/algorithm.md):

    lam_BK[b]   = Λ[domain_b]  over *every configured* teacher (λ = 0 ones included)
    w_BK        = lam_BK / K_eff(normalization)          (objective.teacher_weights)
    r(b, t)     = Σ_{k active} w_bk · (lp_k − lp_ref)     (objective.contrastive_reward, eq. 11)
    A(b, t)     = r − β·(lp_old − lp_ref) [+ outcome bonus]   (objective.advantage)

Building ``lam_BK`` over every configured teacher before dropping the inactive columns is what
makes ``teacher_normalization="all"`` count a λ = 0 teacher in K (the paper's literal 1/K),
while that teacher is never loaded or scored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from tcopd.core.objective import advantage, contrastive_reward, outcome_bonus, teacher_weights
from tcopd.core.teachers import TeacherSpec, lambda_matrix


def pad_right(rows: Sequence[torch.Tensor | Sequence[float]], T: int) -> torch.Tensor:
    """Stack 1-D float rows into ``(B, T)`` float32, zero-padded on the right."""
    out = torch.zeros(len(rows), T, dtype=torch.float32)
    for b, r in enumerate(rows):
        r = torch.as_tensor(r, dtype=torch.float32)
        out[b, : r.numel()] = r
    return out


@dataclass(frozen=True)
class Signal:
    """Everything the loss and the metrics need, padded to ``T`` = the longest response.

    ``teacher_KBT`` holds the *active* teachers in ``names`` order; ``w_BK`` their weights
    ``λ / K_eff`` per response (after the domain table: what the reward and the dense loss use).
    """

    names: tuple[str, ...]
    mask_BT: torch.Tensor
    old_BT: torch.Tensor
    ref_BT: torch.Tensor
    teacher_KBT: torch.Tensor
    w_BK: torch.Tensor
    reward_BT: torch.Tensor
    adv_BT: torch.Tensor

    def logratio_sums(self) -> dict[str, torch.Tensor]:
        """``Σ_bt mask · (lp_k − lp_ref)`` per active teacher (the ``logratio/<name>`` metric)."""
        d_KBT = (self.teacher_KBT - self.ref_BT.unsqueeze(0)) * self.mask_BT
        return {name: d_KBT[k].sum() for k, name in enumerate(self.names)}


def training_signal(
    old: Sequence[torch.Tensor],
    ref: Sequence[torch.Tensor],
    teachers: Mapping[str, Sequence[torch.Tensor]],
    specs: Sequence[TeacherSpec],
    *,
    domains: Sequence[str | None],
    table: Mapping[str, Mapping[str, float]] | None = None,
    normalization: str = "active",
    beta: float = 1.0,
    correct_B: torch.Tensor | None = None,
    group_B: torch.Tensor | None = None,
    outcome_weight: float = 0.0,
) -> Signal:
    """The per-token reward and advantage of B responses (module docstring for the formulas).

    ``old``, ``ref`` and each ``teachers[name]`` are B rows of per-token log-probs (row b has
    ``len(response_b)`` entries). ``specs`` are *all* configured teachers; ``teachers`` holds the
    scored (active) ones, a subset. ``correct_B`` / ``group_B`` feed the optional outcome bonus.
    Raises ``ValueError`` naming the quantity when anything is not finite.
    """
    T = max((len(r) for r in old), default=0)
    mask_BT = pad_right([torch.ones(len(r)) for r in old], T)
    old_BT, ref_BT = pad_right(old, T), pad_right(ref, T)
    names, teacher_KBT, w_BK = _teachers(teachers, specs, T, domains, table, normalization)
    reward_BT = contrastive_reward(teacher_KBT, ref_BT, w_BK) * mask_BT
    bonus_B = _bonus(correct_B, group_B, outcome_weight)
    adv_BT = advantage(reward_BT, old_BT, ref_BT, mask_BT, beta, bonus_B)
    for name, t in (("reward", reward_BT), ("advantage", adv_BT), ("old log-prob", old_BT)):
        if not torch.isfinite(t).all():
            raise ValueError(f"non-finite {name} in this batch")
    return Signal(names, mask_BT, old_BT, ref_BT, teacher_KBT, w_BK, reward_BT, adv_BT)


@dataclass(frozen=True)
class OpenSignal:
    """The advantage before π_old is known (on-policy, π_old comes from the update's own
    forward): ``A = adv_BT − β·lp_old``, with the teachers' weights the dense loss needs."""

    names: tuple[str, ...]
    mask_BT: torch.Tensor
    w_BK: torch.Tensor
    adv_BT: torch.Tensor  # A + β·lp_old: every term of A but −β·lp_old


def open_signal(
    lengths: Sequence[int],
    ref: Sequence[torch.Tensor] | None,
    teachers: Mapping[str, Sequence[torch.Tensor]],
    specs: Sequence[TeacherSpec],
    *,
    domains: Sequence[str | None],
    table: Mapping[str, Mapping[str, float]] | None = None,
    normalization: str = "active",
    beta: float = 1.0,
    correct_B: torch.Tensor | None = None,
    group_B: torch.Tensor | None = None,
    outcome_weight: float = 0.0,
) -> OpenSignal:
    """:func:`training_signal`'s advantage without its ``−β·lp_old`` term, for responses of
    ``lengths`` tokens: ``A + β·lp_old = Σ_k w_k·(lp_k − lp_ref) + β·lp_ref [+ o_b]``.

    ``ref=None``: π_ref cancels (Σ_k w_k = β, :func:`reference_cancels`), so ``lp_ref`` may be
    anything — π_old stands in for it in the full signal — and is taken as 0 here:
    ``A + β·lp_old = Σ_k w_k·lp_k [+ o_b]``. The arithmetic is ``training_signal``'s own (its
    ``advantage`` with ``lp_old = 0``), so ``adv_BT − β·lp_old`` equals its ``adv_BT`` to
    rounding. Raises ``ValueError`` when anything is not finite.
    """
    T = max(lengths, default=0)
    mask_BT = pad_right([torch.ones(n) for n in lengths], T)
    zero_BT = torch.zeros(len(lengths), T)
    ref_BT = pad_right(ref, T) if ref is not None else zero_BT
    names, teacher_KBT, w_BK = _teachers(teachers, specs, T, domains, table, normalization)
    if ref is None and not torch.allclose(w_BK.sum(-1), torch.full_like(w_BK[:, 0], beta)):
        raise ValueError("π_ref is needed: the teachers' weights do not sum to β")
    reward_BT = contrastive_reward(teacher_KBT, ref_BT, w_BK) * mask_BT
    bonus_B = _bonus(correct_B, group_B, outcome_weight)
    adv_BT = advantage(reward_BT, zero_BT, ref_BT, mask_BT, beta, bonus_B)
    if not torch.isfinite(adv_BT).all():
        raise ValueError("non-finite advantage in this batch")
    return OpenSignal(names, mask_BT, w_BK, adv_BT)


def _teachers(
    teachers: Mapping[str, Sequence[torch.Tensor]],
    specs: Sequence[TeacherSpec],
    T: int,
    domains: Sequence[str | None],
    table: Mapping[str, Mapping[str, float]] | None,
    normalization: str,
) -> tuple[tuple[str, ...], torch.Tensor, torch.Tensor]:
    """``(names, teacher_KBT, w_BK)`` of the scored (active) teachers, in ``specs`` order."""
    active = [s for s in specs if s.name in teachers]
    if not active:
        raise ValueError("no scored teacher: at least one teacher needs a non-zero λ")
    teacher_KBT = torch.stack([pad_right(teachers[s.name], T) for s in active])
    lam_all_BK = lambda_matrix(specs, domains, table)
    w_all_BK = teacher_weights(lam_all_BK, normalization)  # type: ignore[arg-type]
    cols = [i for i, s in enumerate(specs) if s.name in teachers]
    return tuple(s.name for s in active), teacher_KBT, w_all_BK[:, cols]


def _bonus(
    correct_B: torch.Tensor | None, group_B: torch.Tensor | None, weight: float
) -> torch.Tensor | None:
    if weight and correct_B is not None and group_B is not None:
        return outcome_bonus(correct_B, group_B, weight)
    return None


def reference_cancels(
    specs: Sequence[TeacherSpec],
    table: Mapping[str, Mapping[str, float]] | None,
    normalization: str,
    beta: float,
) -> bool:
    """True when π_ref drops out of the advantage for every domain: ``Σ_k w_k = β``.

    ``A = Σ_k w_k (lp_k − lp_ref) − β (lp_old − lp_ref) = Σ_k w_k lp_k − β lp_old +
    (β − Σ_k w_k) lp_ref``, so π_ref need not be scored then (e.g. OPD: one teacher, λ = β = 1).
    Checked for the default λ row and every row of the per-domain table.
    """
    rows = [[s.lam for s in specs]]
    rows += [[row.get(s.name, 0.0) for s in specs] for row in (table or {}).values()]
    w_RK = teacher_weights(torch.tensor(rows, dtype=torch.float64), normalization)  # type: ignore[arg-type]
    return bool(torch.all((w_RK.sum(-1) - beta).abs() < 1e-12))

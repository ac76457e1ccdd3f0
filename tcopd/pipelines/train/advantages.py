"""Phase 4, advantages: the per-token reward and advantage (core/signal.py), and the IS weight.

The formulas live in one place, :func:`tcopd.core.signal.training_signal`, which ``tcopd
score`` calls too. The truncated importance weight ``min(exp(lp_old − lp_rollout), cap)``
(G-OPD / verl) needs the rollout engine's own sampling log-probs; it is 1 when they are absent.
"""

from __future__ import annotations

from typing import Any

import torch

from tcopd.core.objective import truncated_is_weight
from tcopd.core.signal import OpenSignal, Signal, open_signal, pad_right, training_signal
from tcopd.errors import TrainingError
from tcopd.pipelines.train.grade import Grades
from tcopd.pipelines.train.rollout import Rollouts
from tcopd.pipelines.train.score import Scores
from tcopd.pipelines.train.setup import Trainer


def advantages(
    tr: Trainer, batch: Rollouts, scores: Scores, grades: Grades
) -> tuple[Signal, torch.Tensor | None]:
    """``(signal, is_weight_BT or None)`` of this rank's responses (π_old known: ``scores.old``).

    When π_ref cancels (``scores.reference`` is None), π_old stands in for it: the advantage
    does not depend on it then (``reference_cancels``)."""
    assert scores.old is not None, "π_old is scored (or returned by the on-policy update) first"
    ref = scores.reference if scores.reference is not None else scores.old
    try:
        signal = training_signal(
            scores.old, ref, scores.teachers, tr.specs, **_signal_settings(tr, batch, grades)
        )
    except ValueError as e:
        raise TrainingError(str(e)) from e
    comps, cfg = batch.completions, tr.cfg
    if not cfg.truncated_is or any(c.logprobs is None for c in comps):
        return signal, None
    T = signal.mask_BT.shape[1]
    rollout_BT = pad_right([c.logprobs for c in comps], T)
    return signal, truncated_is_weight(signal.old_BT, rollout_BT, cfg.is_cap) * signal.mask_BT


def open_advantages(tr: Trainer, batch: Rollouts, scores: Scores, grades: Grades) -> OpenSignal:
    """On-policy: the advantage before π_old is known (``A + β·lp_old``, core/signal.py); the
    update's forward supplies π_old and the ``−β·lp_old`` term."""
    lengths = [len(r) for r in batch.responses]
    try:
        return open_signal(
            lengths,
            scores.reference,
            scores.teachers,
            tr.specs,
            **_signal_settings(tr, batch, grades),
        )
    except ValueError as e:
        raise TrainingError(str(e)) from e


def _signal_settings(tr: Trainer, batch: Rollouts, grades: Grades) -> dict[str, Any]:
    cfg = tr.cfg
    return dict(
        domains=batch.domains,
        table=tr.table,
        normalization=cfg.teacher_normalization,
        beta=cfg.beta,
        correct_B=grades.correct_B,
        group_B=torch.tensor([c.prompt_index for c in batch.completions]),
        outcome_weight=cfg.outcome_weight,
    )

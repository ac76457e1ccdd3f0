"""Phase 3, score: per-token log-probs of the rollouts under π_old, π_ref and every active teacher.

π_old is the student *at rollout time*, scored by the trainer (not the rollout engine's
log-probs, which differ slightly: those only enter the truncated IS weight). Every model is
scored at the rollout temperature (docs/algorithm.md), so π_θ / π_old is a ratio of the same
tempered policy the samples came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tcopd.pipelines.train.rollout import Rollouts
from tcopd.pipelines.train.setup import Trainer
from tcopd.runtime.forward import batched_response_logprobs


@dataclass(frozen=True)
class Scores:
    """Rows of per-token values, one per response (CPU, float32)."""

    old: list[torch.Tensor]
    entropy: list[torch.Tensor]  # of π_old's (tempered) distribution at each position
    models: dict[str, list[torch.Tensor]]  # "reference" (π_old when it cancels) and each teacher


def score(tr: Trainer, batch: Rollouts, with_old: bool = True) -> Scores:
    """``with_old=False`` (on-policy): π_old comes from the update's forward (update.py); its
    rows are zeros until the update fills them in place."""
    cfg = tr.cfg
    if with_old:
        old, entropy = batched_response_logprobs(
            tr.policy,
            batch.prompts,
            batch.responses,
            cfg.score_token_budget,
            cfg.chunk_size,
            temperature=cfg.temperature,
        )
    else:
        old = [torch.zeros(len(r)) for r in batch.responses]
        entropy = [torch.zeros(len(r)) for r in batch.responses]
    scored = dict(tr.scorer.score(batch.prompts, batch.responses).logprobs)
    # π_ref cancels (setup.py): π_old stands in for it — the same list, so that on-policy the
    # update's filling of π_old (in place) fills the stand-in too
    scored.setdefault("reference", old)
    return Scores(old, entropy, scored)

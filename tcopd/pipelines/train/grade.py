"""Phase 2, grade: rollout accuracy (the paper's "training reward"), overlapping with scoring.

Responses go to the math-verify worker pool right after sampling; the verdicts are collected
after scoring, so grading costs no wall time unless it is slower than scoring. Ungraded
responses (timeout, crash) count as wrong and are counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tcopd.pipelines.train.rollout import Rollouts
from tcopd.runtime.grading import Grader


@dataclass(frozen=True)
class Grades:
    correct_B: torch.Tensor  # 1.0 correct, 0.0 wrong or ungraded
    ungraded: int


def submit(grader: Grader, batch: Rollouts) -> None:
    """Queue every response for grading (returns at once)."""
    for k, (c, gold) in enumerate(zip(batch.completions, batch.golds)):
        grader.submit(k, gold, c.text)


def collect(grader: Grader, batch: Rollouts) -> Grades:
    """Wait for the verdicts of the responses queued by :func:`submit`."""
    verdicts = grader.results()
    n = len(batch.completions)
    return Grades(
        torch.tensor([1.0 if verdicts[k] else 0.0 for k in range(n)]),
        sum(verdicts[k] is None for k in range(n)),
    )

"""Phase 2, grade: rollout accuracy (the paper's "training reward"), overlapping with scoring.

Responses go to the math-verify worker pool right after sampling; the verdicts are collected
after scoring, so grading costs no wall time unless it is slower than scoring. Ungraded
responses (timeout, crash) count as wrong and are counted. With ``--no-grade`` nothing is
graded and ``rollout_accuracy`` is null (the outcome bonus needs grading, so it is refused then).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tcopd.pipelines.train.rollout import Rollouts
from tcopd.runtime.evaluation.grading import Grader


@dataclass(frozen=True)
class Grades:
    correct_B: torch.Tensor  # 1.0 correct, 0.0 wrong or ungraded
    ungraded: int
    graded: bool = True  # False: --no-grade


def submit(grader: Grader | None, batch: Rollouts, enabled: bool) -> None:
    """Queue every response for grading (returns at once)."""
    if not enabled or grader is None:
        return
    for k, (c, gold) in enumerate(zip(batch.completions, batch.golds)):
        grader.submit(k, gold, c.text)


def collect(grader: Grader | None, batch: Rollouts, enabled: bool) -> Grades:
    """Wait for the verdicts of the responses queued by :func:`submit`."""
    n = len(batch.completions)
    if not enabled or grader is None:
        return Grades(torch.zeros(n), 0, graded=False)
    verdicts = grader.results()
    return Grades(
        torch.tensor([1.0 if verdicts[k] else 0.0 for k in range(n)]),
        sum(verdicts[k] is None for k in range(n)),
    )

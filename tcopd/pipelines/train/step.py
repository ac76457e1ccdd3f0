"""One training step, phase by phase (SPEC §1, §5):

1. rollout     — sample responses to this step's prompts            (rollout.py)
2. grade       — math-verify, in worker processes, overlapping 3    (grade.py)
3. score       — π_old, π_ref and the active teachers               (score.py)
4. advantages  — contrastive reward, advantage, IS weight           (advantages.py → core/signal.py)
5. update      — epochs × mini-batches through DeepSpeed            (update.py → core/objective.py,
                 clipped loss; core/dense.py, dense loss)
6. sync        — new weights to the rollout engine, if it has a copy (rollout.py)
7. metrics     — one row of metrics.jsonl, summed over ranks        (metrics.py)
"""

from __future__ import annotations

from typing import Any

from tcopd.errors import TrainingError
from tcopd.pipelines.train import grade
from tcopd.pipelines.train.advantages import advantages
from tcopd.pipelines.train.data import derived_seed
from tcopd.pipelines.train.metrics import step_row, timer
from tcopd.pipelines.train.rollout import rollout, sync
from tcopd.pipelines.train.score import score
from tcopd.pipelines.train.setup import Trainer
from tcopd.pipelines.train.update import is_on_policy, update


def train_step(tr: Trainer, step: int) -> dict[str, Any]:
    """Run step ``step`` (0-based) and return its metrics row; errors name the step."""
    try:
        return _phases(tr, step)
    except TrainingError as e:
        raise TrainingError(f"step {step + 1}: {e}; the last checkpoint is kept") from e


def _phases(tr: Trainer, step: int) -> dict[str, Any]:
    times: dict[str, float] = {}
    on_policy = is_on_policy(tr.update)  # π_old then comes from the update's own forward
    with timer("step", times):
        tr.emit("rollout", step=step)
        with timer("rollout", times):
            batch = rollout(tr, step)
        grade.submit(tr.grader, batch, tr.cfg.grade)
        tr.emit("scoring", step=step)
        with timer("scoring", times):
            scores = score(tr, batch, with_old=not on_policy)
        with timer("grade_wait", times):
            grades = grade.collect(tr.grader, batch, tr.cfg.grade)
        signal, is_BT = advantages(tr, batch, scores, grades)
        tr.emit("update", step=step)
        with timer("update", times):
            upd = update(
                tr, batch, scores, signal, is_BT, derived_seed(tr.cfg.seed, "update", step)
            )
        if on_policy:  # the same advantage, now with π_old known: for the metrics
            signal, is_BT = advantages(tr, batch, scores, grades)
        with timer("sync", times):
            sync(tr)
    return step_row(tr, step, batch, scores, grades, signal, is_BT, upd, times)

"""One training step, phase by phase (docs/algorithm.md, docs/train.md):

1. rollout     — sample responses to this step's prompts            (rollout.py)
2. grade       — math-verify, in worker processes, overlapping 3    (grade.py)
3. score       — π_old, π_ref and the active teachers               (score.py)
4. advantages  — contrastive reward, advantage, IS weight           (advantages.py → core/signal.py)
5. update      — epochs × mini-batches through DeepSpeed            (update.py → core/objective.py,
                 clipped loss; core/dense.py, dense loss)
6. sync        — new weights to the rollout engine, if it has a copy (rollout.py)
7. metrics     — one row of metrics.jsonl, summed over ranks        (metrics.py)

On-policy (one optimizer step per batch) π_old is the update's own forward, so 4 and 5 swap:
the update takes the advantage without its −β·lp_old term (``open_advantages``) and returns
π_old, and the signal (for the metrics) is built once, after it, from the returned π_old.

Several ranks: the phases a rank runs alone (rollout, grading, scoring's local part, the
advantage) run under ``on_every_rank``: when one rank fails there, every rank stops with that
rank's error, instead of the others waiting in the next collective until the process group's
timeout (30 minutes). The update checks its loss the same way before each backward.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

from tcopd.errors import TrainingError
from tcopd.pipelines.train import grade
from tcopd.pipelines.train.advantages import advantages, open_advantages
from tcopd.pipelines.train.data import derived_seed
from tcopd.pipelines.train.metrics import step_row, timer
from tcopd.pipelines.train.rollout import rollout, sync
from tcopd.pipelines.train.score import score
from tcopd.pipelines.train.setup import Trainer
from tcopd.pipelines.train.update import is_on_policy, update
from tcopd.runtime.training.distributed import on_every_rank


def train_step(tr: Trainer, step: int) -> dict[str, Any]:
    """Run step ``step`` (0-based) and return its metrics row; errors name the step."""
    try:
        return _phases(tr, step)
    except TrainingError as e:  # (RankFailed stays RankFailed: the loop shuts the group down)
        raise type(e)(f"step {step + 1}: {e}; the last checkpoint is kept") from e


def _phases(tr: Trainer, step: int) -> dict[str, Any]:
    times: dict[str, float] = {}
    together = partial(on_every_rank, tr.reduce)
    seed = derived_seed(tr.cfg.seed, "update", step)
    on_policy = is_on_policy(tr.update)  # π_old then comes from the update's own forward
    with timer("step", times):
        tr.emit("rollout", step=step)
        with timer("rollout", times):
            batch = together(rollout, tr, step)
        grade.submit(tr.grader, batch, tr.cfg.grade)
        tr.emit("scoring", step=step)
        with timer("scoring", times):
            scores = together(score, tr, batch, with_old=not on_policy)
        with timer("grade_wait", times):
            grades = together(grade.collect, tr.grader, batch, tr.cfg.grade)
        if on_policy:  # the advantage lacks −β·lp_old until the update's forward gives π_old
            opened = together(open_advantages, tr, batch, scores, grades)
            tr.emit("update", step=step)
            with timer("update", times):
                upd = update(tr, batch, scores, opened, None, seed)
            scores = replace(scores, old=upd.old, entropy=upd.entropy)
        signal, is_BT = together(advantages, tr, batch, scores, grades)
        if not on_policy:
            tr.emit("update", step=step)
            with timer("update", times):
                upd = update(tr, batch, scores, signal, is_BT, seed)
        with timer("sync", times):
            sync(tr)
    return step_row(tr, step, batch, scores, grades, signal, is_BT, upd.stats, times)

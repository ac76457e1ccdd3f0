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

One step off (``--max-staleness 1``, ahead.py): phase 1 takes the batch generated during the
previous step, and starts generating the next one in the background with the weights this
step trains from; phase 6 first waits for it (the engine gets new weights between
generations). The row logs what waited: ``time_engine_idle_s``, ``time_trainer_idle_s``,
``time_teachers_idle_s``.

Several ranks: the phases a rank runs alone (rollout, grading, scoring's local part, the
advantage) run under ``on_every_rank``: when one rank fails there, every rank stops with that
rank's error, instead of the others waiting in the next collective until the process group's
timeout (30 minutes). The update checks its loss the same way before each backward.
"""

from __future__ import annotations

import time
from dataclasses import replace
from functools import partial
from typing import Any

from tcopd.errors import TrainingError
from tcopd.pipelines.train import grade
from tcopd.pipelines.train.advantages import advantages, open_advantages
from tcopd.pipelines.train.ahead import Ahead
from tcopd.pipelines.train.data import derived_seed
from tcopd.pipelines.train.metrics import step_row, timer
from tcopd.pipelines.train.rollout import rollout, sync
from tcopd.pipelines.train.score import score
from tcopd.pipelines.train.setup import Trainer
from tcopd.pipelines.train.update import is_on_policy, update
from tcopd.runtime.training.distributed import on_every_rank


def train_step(tr: Trainer, step: int, ahead: Ahead | None = None) -> dict[str, Any]:
    """Run step ``step`` (0-based) and return its metrics row; errors name the step.

    ``ahead`` (``--max-staleness 1``): the step takes its batch from it when it was generated
    ahead, and has it generate the next one while this one is scored and trained on."""
    try:
        return _phases(tr, step, ahead)
    except TrainingError as e:  # (RankFailed stays RankFailed: the loop shuts the group down)
        raise type(e)(f"step {step + 1}: {e}; the last checkpoint is kept") from e


def _phases(tr: Trainer, step: int, ahead: Ahead | None) -> dict[str, Any]:
    times: dict[str, float] = {}
    together = partial(on_every_rank, tr.reduce)
    seed = derived_seed(tr.cfg.seed, "update", step)
    on_policy = is_on_policy(tr.update)  # π_old then comes from the update's own forward
    t0 = time.perf_counter()
    with timer("step", times):
        tr.emit("rollout", step=step)
        got = ahead.take(step) if ahead is not None else None
        if got is None:
            with timer("rollout", times):
                batch = together(rollout, tr, step)
            early = None
        else:  # generated during the previous step, with the weights before its update
            batch, early = got.batch, got.early
            times["rollout"] = got.ended - got.started
        try:
            if ahead is not None and step + 1 < tr.cfg.steps:
                ahead.start(step + 1, step)  # with θ_step, the weights this batch trains from
            grade.submit(tr.grader, batch, tr.cfg.grade)
        except BaseException:
            if early is not None:
                early.close()  # (score() closes it from here on)
            raise
        tr.emit("scoring", step=step)
        with timer("scoring", times):
            scores = together(score, tr, batch, with_old=not on_policy, started=early)
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
        if ahead is not None:  # the engine gets new weights between generations, never during one
            with timer("rollout_wait", times):
                ahead.wait()
        with timer("sync", times):
            sync(tr)
    times |= _idle(times, ahead, t0, got is None)
    return step_row(tr, step, batch, scores, grades, signal, is_BT, upd.stats, times)


def _idle(
    times: dict[str, float], ahead: Ahead | None, t0: float, generated_here: bool
) -> dict[str, float]:
    """Who waited how long in this step: the engine (not generating), the trainer (waiting for
    a batch: the synchronous rollout, or the wait for the batch ahead) and the teachers (not
    scoring)."""
    step = times["step"]
    if ahead is None:
        busy, trainer_idle = times["rollout"], times["rollout"]
    else:
        busy = ahead.engine_busy(t0, t0 + step) + (times["rollout"] if generated_here else 0.0)
        trainer_idle = times.get("rollout_wait", 0.0) + (
            times["rollout"] if generated_here else 0.0
        )
    return {
        "engine_idle": max(step - busy, 0.0),
        "trainer_idle": trainer_idle,
        "teachers_idle": max(step - times["scoring"], 0.0),
    }

"""The learning gate: a change that breaks distillation on the shipped toy world fails CI.

Unit tests check every equation against float64 references; none of them notices when the loop
as a whole stops learning (a sign flip spread over two modules, a mask that drops the response, a
learning-rate schedule that never warms up). verl and NeMo-RL gate merges on a short convergence
run for the same reason. This is ours: dense OPD (λ = 1) from the shipped student toward the
shipped expert, 16 steps × 16 prompts × 4 rollouts — about 15 s of training on 2 cores — then the
trainer's own evaluation on 100 held-out problems (n = 2).

Thresholds, from 5 seeds of exactly this run on the shipped world (2026-12-04, 2-core CPU;
`tcopd train --toy --lambdas 1 --loss dense --lr 1e-3 --steps 16 --batch-size 16 --eval-every 16
--eval-prompts 100 --eval-n 2 --save-every 0 --seed S`, S = 0..4):

- eval mean@2 − the student's table accuracy (21.0 %): +49.5 / +56.5 / +52.5 / +47.0 / +45.5
  points, minimum +45.5. The gate asks for ≥ +25: the minimum minus a 20-point margin for other
  machines (whose float streams differ, so each seed's trajectory differs).
- rollout accuracy, mean of the last 3 steps − step 1's: +0.32 / +0.56 / +0.57 / +0.55 / +0.40,
  minimum +0.32. The gate asks for ≥ +0.15 (margin 0.17; one step's accuracy over 64 rollouts
  has a standard error of up to 0.06).

Since 2026-12-07 `make test` runs it with one torch thread (two xdist workers), another float
stream than the 2-thread seeds above: the margins are for exactly that, and it passed in every
run of that session (the thresholds are unchanged).

With the learning rate at 1e-7 (learning effectively off) the same run (seed 0) ends at eval 26.5 %
(+5.5 points) with a rollout-accuracy rise of −0.06: both thresholds fail, so the gate can fail.
"""

from __future__ import annotations

import json

import pytest

from tcopd.cli.main import main

MIN_EVAL_GAIN_POINTS = 25.0
MIN_ROLLOUT_RISE = 0.15


def _run(out, seed: int = 0) -> list[dict]:
    # lr 1e-3, the toy recipe's sampled-loss lr, as the thresholds were measured (the recipe's
    # dense default is 5e-4 since)
    args = ["train", "--toy", "--lambdas", "1", "--loss", "dense", "--lr", "1e-3", "--steps", "16"]
    args += ["--batch-size", "16", "--eval-every", "16", "--eval-prompts", "100", "--eval-n", "2"]
    args += ["--save-every", "0", "--seed", str(seed), "--out", str(out)]
    try:
        main(args)
    except SystemExit as e:
        assert e.code in (0, None)
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_dense_opd_lifts_the_shipped_student(tmp_path):
    from tcopd.runtime.toy import ensure_toy

    student = 100.0 * ensure_toy().table()["models"]["student"]["accuracy"]
    rows = _run(tmp_path / "gate")
    assert len(rows) == 16
    gain = rows[-1]["eval_mean_at_n"] - student
    acc = [r["rollout_accuracy"] for r in rows]
    rise = sum(acc[-3:]) / 3 - acc[0]
    print(
        f"gate: eval {rows[-1]['eval_mean_at_n']:.1f} % (student {student:.1f} %), rise {rise:+.2f}"
    )
    assert gain >= MIN_EVAL_GAIN_POINTS, (student, rows[-1]["eval_mean_at_n"])
    assert rise >= MIN_ROLLOUT_RISE, acc

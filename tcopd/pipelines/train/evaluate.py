"""Periodic evaluation during training: mean@n on the held-out prompts, with its standard error.

Each rank samples a strided share of the prompts with the rollout engine (at the training
temperature, a fixed seed), grades them, and the per-problem counts are summed over ranks.
"""

from __future__ import annotations

from tcopd.core.metrics import mean_at_n, standard_error
from tcopd.pipelines.train.setup import Trainer
from tcopd.runtime.generation.rollout import SamplingParams
from tcopd.runtime.training.distributed import on_every_rank


def evaluate(tr: Trainer, step: int) -> dict[str, float]:
    assert tr.eval_data is not None and tr.grader is not None
    cfg = tr.cfg
    n = cfg.eval_prompts or len(tr.eval_data)
    ids, golds = tr.eval_data.ids[:n], tr.eval_data.golds[:n]
    mine = list(range(tr.dist.rank, len(ids), tr.dist.world_size))
    tr.emit("eval", step=step)
    sampling = SamplingParams(
        n=cfg.eval_n,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_response_tokens,
        seed=cfg.seed + 17,
    )
    grader = tr.grader

    def local_counts() -> dict[str, float]:  # this rank's share, before any collective
        tr.rollout.wake()
        comps = tr.rollout.generate([ids[i] for i in mine], sampling)
        tr.rollout.sleep()
        verdicts = grader.grade(
            [golds[mine[c.prompt_index]] for c in comps], [c.text for c in comps]
        )
        counts = {str(i): 0.0 for i in range(len(ids))}
        for c, v in zip(comps, verdicts):
            counts[str(mine[c.prompt_index])] += 1.0 if v else 0.0
        return counts

    counts = tr.reduce.sum(on_every_rank(tr.reduce, local_counts))
    per_problem = [int(counts[str(i)]) for i in range(len(ids))]
    return {
        "eval_mean_at_n": 100.0 * mean_at_n([(cfg.eval_n, c) for c in per_problem]),
        "eval_stderr": 100.0 * standard_error([c / cfg.eval_n for c in per_problem]),
    }

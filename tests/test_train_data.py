"""The loop's data order and derived seeds: deterministic, one mixer, streams that never meet."""

from __future__ import annotations

from tcopd.pipelines.train.data import STREAMS, derived_seed, rank_share, step_prompts
from tcopd.runtime.generation.rollout import batch_seed


def test_derived_seeds_are_the_engine_mixer_on_separate_streams():
    seeds = {
        (s, i, r): derived_seed(7, s, i, r) for s in STREAMS for i in range(50) for r in range(4)
    }
    assert len(set(seeds.values())) == len(seeds)  # no two (stream, index, rank) share a seed
    assert derived_seed(7, "sampling", 3, 1) == batch_seed(7 * 3 + 1, 3, 1)  # the one mixer
    assert derived_seed(8, "data", 0) != derived_seed(7, "data", 0)


def test_every_prompt_once_per_epoch_and_ranks_split_a_step():
    n, bs = 10, 4
    stream = [i for step in range(5) for i in step_prompts(n, bs, seed=3, step=step)]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert step_prompts(n, bs, 3, 2) == step_prompts(n, bs, 3, 2)  # a function of (seed, step)
    idx = step_prompts(n, bs, 3, 1)
    assert rank_share(idx, 0, 2) + rank_share(idx, 1, 2) == idx

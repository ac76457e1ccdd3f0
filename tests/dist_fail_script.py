"""Run under torchrun: ``tcopd train`` (the CLI, as a user runs it) with a failure on rank 1 only.

Usage: dist_fail_script.py KIND STEP -- CLI ARGS...  KIND: ``empty`` (every rollout of rank 1 is
empty) or ``nan`` (rank 1's loss is not finite), from its STEP-th rollout or update (1-based) on. The other ranks run normally: they must stop with the same error instead of waiting in a collective.
"""

import dataclasses
import os
import sys

import torch

from tcopd.cli.main import main
from tcopd.pipelines.train import update
from tcopd.runtime.generation import rollout


def inject(kind: str, step: int) -> None:
    calls = {"n": 0}
    if kind == "empty":
        real_generate = rollout.HFEngine.generate

        def generate(self, prompt_ids, sampling):
            comps = real_generate(self, prompt_ids, sampling)
            calls["n"] += 1
            if calls["n"] < step:
                return comps
            return [dataclasses.replace(c, response_ids=[]) for c in comps]

        rollout.HFEngine.generate = generate
    elif kind == "nan":
        real_update, real_loss = update.ppo_update, update._micro_batch_loss

        def ppo_update(*args, **kwargs):  # counts the steps' updates
            calls["n"] += 1
            return real_update(*args, **kwargs)

        def micro_batch_loss(*args):
            loss, stats, ntok = real_loss(*args)
            return (loss * float("nan") if calls["n"] >= step else loss), stats, ntok

        update.ppo_update, update._micro_batch_loss = ppo_update, micro_batch_loss
    else:
        raise SystemExit(f"unknown failure kind {kind!r}")


if __name__ == "__main__":
    kind, step, sep, *args = sys.argv[1:]
    assert sep == "--", sys.argv
    torch.set_num_threads(1)
    if os.environ["RANK"] == "1":
        inject(kind, int(step))
    main(args)

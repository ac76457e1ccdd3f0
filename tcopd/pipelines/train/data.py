"""Training prompts: loading, and which prompts each step takes (deterministic by seed).

The data order is a seeded permutation per epoch; step ``s`` takes the next ``batch_size``
prompts of that stream, and rank ``r`` of ``W`` takes its contiguous share. A step therefore
depends only on (seed, step) and the weights, so a resumed run reproduces an uninterrupted one.

Every seed the loop derives comes from one mixer, :func:`derived_seed` (splitmix64, the HF
engine's own :func:`~tcopd.runtime.generation.rollout.batch_seed`), each purpose on its own stream so that
two purposes never share a seed: the data order per epoch, the sampling per (step, rank), the
update's mini-batch shuffles per step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from tcopd.errors import DataError
from tcopd.runtime.data.datasets import answer_format_of, load_prepared
from tcopd.runtime.data.prompts import render_prompt
from tcopd.runtime.generation.rollout import batch_seed

STREAMS = {"data": 1, "sampling": 2, "update": 3}


def derived_seed(seed: int, stream: str, index: int, rank: int = 0) -> int:
    """The seed of ``stream`` (data, sampling, update) for ``index`` (epoch or step) on ``rank``."""
    return batch_seed(seed * len(STREAMS) + STREAMS[stream] - 1, index, rank)


@dataclass(frozen=True)
class Prompts:
    """Tokenised prompts of a prepared data file, with their gold answers and domains."""

    ids: list[list[int]]
    golds: list[str]
    domains: list[str | None]
    messages: list[list[dict[str, Any]]]  # each prompt's chat messages (context teachers)
    answer_format: str = "boxed"  # how a response's answer is read (reward_model.answer_format)

    def __len__(self) -> int:
        return len(self.ids)


def load_prompts(path: str, tokenizer: Any, template: str, max_prompt_tokens: int) -> Prompts:
    """Token ids, gold answers and domains of a prepared data file; over-long prompts skipped."""
    ids, golds, domains, messages, skipped = [], [], [], [], 0
    rows = load_prepared(path)
    answer_format = answer_format_of(rows, path)
    for row in rows:
        text = render_prompt(row["prompt"], tokenizer, template)
        toks = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(toks) > max_prompt_tokens:
            skipped += 1
            continue
        ids.append(list(toks))
        golds.append(str(row["reward_model"]["ground_truth"]))
        domains.append(row.get("domain"))
        messages.append([dict(m) for m in row["prompt"]])
    if not ids:
        raise DataError(
            f"{path}: no prompt fits max_prompt_tokens={max_prompt_tokens} ({skipped} skipped)"
        )
    return Prompts(ids, golds, domains, messages, answer_format)


def data_order(n: int, seed: int, epoch: int) -> list[int]:
    """The seeded permutation of ``n`` prompts for ``epoch``."""
    order = list(range(n))
    random.Random(derived_seed(seed, "data", epoch)).shuffle(order)
    return order


def step_prompts(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Indices of the prompts of ``step`` (0-based): consecutive slices of per-epoch permutations."""
    out: list[int] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n)
        order = data_order(n, seed, epoch)
        take = min(batch_size - len(out), n - offset)
        out.extend(order[offset : offset + take])
        pos += take
    return out


def rank_share(indices: list[int], rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s contiguous share of a step's prompts (batch_size is divisible by W)."""
    per_rank = len(indices) // world_size
    return indices[rank * per_rank : (rank + 1) * per_rank]

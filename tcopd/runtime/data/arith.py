"""Small arithmetic tasks for real pretrained models: ``tcopd prepare arith --task NAME``.

A task is every distinct problem of one kind (e.g. all sums ``a + b`` with ``0 ≤ a, b ≤ 20``),
shuffled with the seed and split once: the first ``test_size`` are the held-out problems, the
rest the training prompts, so no held-out problem is trained on. Each problem is one user turn
(the question only, no instruction) and its rows say ``reward_model.answer_format:
last_number``: a response's last number is its answer (grading: ``runtime.evaluation.grading``),
because the models these tasks are for (SmolLM2-135M-Instruct) answer in words and never box.

Why these tasks: a 135 M instruct model cannot do the toy world's multi-step sums at all
(docs/results.md §7), so accuracy could not move there. These are the search of
docs/results.md §11: one operation on small numbers, where such a model is right some of the
time and a few-shot prompt makes it right more often.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcopd.errors import ConfigError
from tcopd.runtime.data.io import write_jsonl, write_parquet
from tcopd.runtime.data.rows import make_row


@dataclass(frozen=True)
class Task:
    """One kind of problem: every (question, answer) pair it has, in a fixed order."""

    name: str
    help: str
    problems: Callable[[], list[tuple[str, str]]]


def _sums(lo: int, hi: int) -> list[tuple[str, str]]:
    return [
        (f"What is {a} + {b}?", str(a + b)) for a in range(lo, hi + 1) for b in range(lo, hi + 1)
    ]


def _sums_2d1d() -> list[tuple[str, str]]:
    return [(f"What is {a} + {b}?", str(a + b)) for a in range(10, 100) for b in range(1, 10)]


def _differences(hi: int) -> list[tuple[str, str]]:
    return [(f"What is {a} - {b}?", str(a - b)) for a in range(1, hi + 1) for b in range(0, a + 1)]


def _larger() -> list[tuple[str, str]]:
    return [
        (f"Which number is larger, {a} or {b}?", str(max(a, b)))
        for a in range(10, 100)
        for b in range(10, 100)
        if a != b and abs(a - b) < 10
    ]


def _next() -> list[tuple[str, str]]:
    return [(f"What number comes right after {n}?", str(n + 1)) for n in range(10, 1000)]


def _double() -> list[tuple[str, str]]:
    return [(f"What is {n} times 2?", str(2 * n)) for n in range(2, 500)]


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("add20", "a + b with 0 ≤ a, b ≤ 20 (441 problems)", lambda: _sums(0, 20)),
        Task("add-2d1d", "a + b with 10 ≤ a ≤ 99, 1 ≤ b ≤ 9 (810 problems)", _sums_2d1d),
        Task("sub20", "a - b with 0 ≤ b ≤ a ≤ 20 (230 problems)", lambda: _differences(20)),
        Task("larger", "the larger of two two-digit numbers less than 10 apart", _larger),
        Task("next", "the number after n, 10 ≤ n ≤ 999 (990 problems)", _next),
        Task("double", "n times 2, 2 ≤ n ≤ 499 (498 problems)", _double),
    )
}


def split(
    name: str, seed: int, test_size: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, test) problems of task ``name``: one seeded shuffle, the first ``test_size`` held out."""
    if name not in TASKS:
        raise ConfigError(f"unknown arith task {name!r}; choose one of {', '.join(TASKS)}")
    problems = TASKS[name].problems()
    if test_size < 1 or test_size >= len(problems):
        raise ConfigError(
            f"arith task {name!r} has {len(problems)} problems; --test-size must be in "
            f"[1, {len(problems) - 1}] (got {test_size})"
        )
    order = list(range(len(problems)))
    random.Random(seed).shuffle(order)
    picked = [problems[i] for i in order]
    return picked[test_size:], picked[:test_size]


def rows(name: str, problems: list[tuple[str, str]], split_name: str) -> list[dict[str, Any]]:
    """Prepared rows (verl's format) of ``problems``, answers read as the last number."""
    return [
        make_row(
            q,
            a,
            data_source=f"arith-{name}",
            split=split_name,
            index=i,
            instruction="",
            answer_format="last_number",
        )
        for i, (q, a) in enumerate(problems)
    ]


def write_task(name: str, out: Path, seed: int = 0, test_size: int = 200) -> list[Path]:
    """Write ``out/train.{parquet,jsonl}`` and ``out/test.{parquet,jsonl}``; return the paths."""
    train, test = split(name, seed, test_size)
    files = []
    for split_name, problems in (("train", train), ("test", test)):
        r = rows(name, problems, split_name)
        files += [
            write_parquet(out / f"{split_name}.parquet", r),
            write_jsonl(out / f"{split_name}.jsonl", r),
        ]
    return files

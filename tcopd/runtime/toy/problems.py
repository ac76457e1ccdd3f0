"""Problem generators of the toy world: a *math* and a *code* domain, and the solution styles.

Math: 2–3 step add/subtract word problems ("Tom has 63 apples. Tom buys 15. Then Tom loses 8.
How many apples does Tom have now?"). The verb of each step decides the operation, so solving
one means *choosing* the right operation per step and then doing the arithmetic.

Code: a chain of assignments whose operations are written out ("x = 63\\ny = x + 15\\n...
print(y)"): the operation is given, only the arithmetic is asked.

Numbers are chosen so that *every* choice of operations stays non-negative (start 30–89, steps
1–9, at most 3 of them), so a solution with the wrong operations is still arithmetically clean.
Answers are integers written as plain decimal strings (verifiable by math-verify).

Solution styles (the behaviours the three toy models are trained on):

- ``concise``  — "63 + 15 = 78. 78 - 8 = 70. \\boxed{70}" (the expert's style).
- ``random_ops`` — concise working, but each step's operation is a coin flip (the student's
  behavioural failure: the arithmetic of every equation is still correct).
- ``careless_ops`` — each step's operation right with a probability (world v3's student: it reads
  the verb, but not reliably).
- ``random_print`` — concise, correct working on code, but the boxed value is that of a variable
  picked at random (the multi-task student's code failure: it traces every assignment right and
  does not read which variable is printed).
- ``guess``    — a bare ``\\boxed{N}`` with a guessed N and no working (the student's other
  failure).
- ``verbose``  — restate every quantity, state a plan, then work (the anti-expert's style), with
  the operations given by ``ops``.
- ``verbose_guess`` — the same restatement and plan, then a guessed box (the anti-expert's usual
  math answer: long and wrong).
- ``hedged``   — any of the above after ``k`` hedging sentences ("Hmm, let me think. Wait, let me
  check."): the single-task world v3's *habit* (the student hedges 1–3 times, the expert 0–1, the
  anti-expert 3–5), a length that carries no information and that the student can unlearn token
  by token.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = ("Tom", "Ann", "Sam", "Mia", "Ben", "Eva", "Max", "Zoe", "Leo", "Ivy", "Kai", "Amy")
ITEMS = ("apples", "books", "coins", "cards", "eggs", "pens", "shells", "stamps", "toys", "beads")
ADD_VERBS = ("buys", "finds", "gets", "wins", "picks up", "is given")
SUB_VERBS = ("gives away", "eats", "loses", "sells", "drops", "uses")
VARIABLES = ("a", "b", "c", "k", "m", "n", "p", "q", "x", "y", "z")

# Hedging sentences (world v3): filler that makes a response longer and says nothing.
HEDGES = (
    "Hmm, let me think.",
    "Let me see.",
    "Okay, so.",
    "Wait, let me check.",
    "Let us be careful.",
)

START_RANGE = (30, 89)
STEP_RANGE = (1, 9)
STEP_COUNTS = (2, 3)


@dataclass(frozen=True)
class Problem:
    """One generated problem: ``domain`` ("math"|"code"), the question text, start value and steps.

    ``steps`` are ``(op, amount, phrase)`` with op ``"+"``/``"-"``; ``phrase`` is the verb (math)
    or the assigned variable name (code). ``subject`` is the person (math) or the first variable.
    """

    domain: str
    question: str
    start: int
    steps: tuple[tuple[str, int, str], ...]
    subject: str
    item: str = ""

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(op for op, _, _ in self.steps)

    @property
    def answer(self) -> int:
        return run_ops(self.start, [(op, b) for op, b, _ in self.steps])[-1]


def run_ops(start: int, steps: list[tuple[str, int]]) -> list[int]:
    """Running values after each step: ``[v1, v2, ...]`` with ``v_i = v_{i-1} op_i b_i``."""
    values, v = [], start
    for op, b in steps:
        v = v + b if op == "+" else v - b
        values.append(v)
    return values


def _draw_numbers(rng: random.Random) -> tuple[int, list[int]]:
    k = rng.choice(STEP_COUNTS)
    return rng.randint(*START_RANGE), [rng.randint(*STEP_RANGE) for _ in range(k)]


def make_math(rng: random.Random) -> Problem:
    """A 2–3 step add/subtract word problem."""
    start, amounts = _draw_numbers(rng)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    steps, sentences = [], [f"{name} has {start} {item}."]
    for i, b in enumerate(amounts):
        op = rng.choice("+-")
        verb = rng.choice(ADD_VERBS if op == "+" else SUB_VERBS)
        steps.append((op, b, verb))
        sentences.append(f"{'Then ' + name if i else name} {verb} {b}.")
    sentences.append(f"How many {item} does {name} have now?")
    return Problem("math", " ".join(sentences), start, tuple(steps), name, item)


def make_code(rng: random.Random) -> Problem:
    """A tiny straight-line program; the question is what it prints."""
    start, amounts = _draw_numbers(rng)
    names = rng.sample(VARIABLES, len(amounts) + 1)
    lines, steps = [f"{names[0]} = {start}"], []
    for i, b in enumerate(amounts):
        op = rng.choice("+-")
        steps.append((op, b, names[i + 1]))
        lines.append(f"{names[i + 1]} = {names[i]} {op} {b}")
    lines.append(f"print({names[-1]})")
    question = "What does this program print?\n" + "\n".join(lines)
    return Problem("code", question, start, tuple(steps), names[0])


def make_problem(domain: str, rng: random.Random) -> Problem:
    if domain == "math":
        return make_math(rng)
    if domain == "code":
        return make_code(rng)
    raise ValueError(f"unknown toy domain {domain!r}")


# ------------------------------------------------------------------------------------- styles


def _equations(p: Problem, ops: tuple[str, ...]) -> list[str]:
    values = run_ops(p.start, [(op, b) for op, (_, b, _) in zip(ops, p.steps, strict=False)])
    prev = [p.start] + values[:-1]
    eqs = [
        f"{a} {op} {b} = {v}"
        for a, op, (_, b, _), v in zip(prev, ops, p.steps, values, strict=False)
    ]
    if p.domain == "code":  # name the variable being assigned
        eqs = [f"{var} = {eq}" for (_, _, var), eq in zip(p.steps, eqs, strict=False)]
    return eqs


def final_value(p: Problem, ops: tuple[str, ...]) -> int:
    return run_ops(p.start, [(op, b) for op, (_, b, _) in zip(ops, p.steps, strict=False)])[-1]


def concise(p: Problem, ops: tuple[str, ...] | None = None) -> str:
    """Equations, one per step, then the boxed result (correct when ``ops`` is None)."""
    ops = p.ops if ops is None else ops
    return ". ".join(_equations(p, ops)) + f". \\boxed{{{final_value(p, ops)}}}"


def random_ops(p: Problem, rng: random.Random) -> tuple[str, ...]:
    """Each step's operation a fair coin flip (right by chance only)."""
    return tuple(rng.choice("+-") for _ in p.steps)


def random_print(p: Problem, rng: random.Random) -> str:
    """Correct equations, then the boxed value of a uniformly random variable of the program."""
    values = [p.start, *run_ops(p.start, [(op, b) for op, b, _ in p.steps])]
    return ". ".join(_equations(p, p.ops)) + f". \\boxed{{{rng.choice(values)}}}"


def careless_ops(p: Problem, rng: random.Random, right: float) -> tuple[str, ...]:
    """Each step's operation right with probability ``right``, else the other one: a solver that
    reads the verb but not reliably (world v3's student, ``right`` = 0.65)."""
    flip = {"+": "-", "-": "+"}
    return tuple(op if rng.random() < right else flip[op] for op in p.ops)


def wrong_ops(p: Problem, rng: random.Random) -> tuple[str, ...]:
    """Random operations with at least one step wrong (so the result is wrong)."""
    while True:
        ops = random_ops(p, rng)
        if ops != p.ops:
            return ops


def guess(p: Problem, rng: random.Random) -> str:
    """A bare boxed guess near the starting value, no working."""
    return f"\\boxed{{{max(0, p.start + rng.randint(-15, 15))}}}"


def _restatement(p: Problem) -> list[str]:
    if p.domain == "math":
        return [f"{p.subject} has {p.start} {p.item}."] + [
            f"{p.subject} {verb} {b}." for _, b, verb in p.steps
        ]
    names = [p.subject] + [var for _, _, var in p.steps]
    return [f"{names[0]} is {p.start}."] + [
        f"{var} is {names[i]} {op} {b}." for i, (op, b, var) in enumerate(p.steps)
    ]


def verbose_guess(p: Problem, rng: random.Random) -> str:
    """Restate every quantity and state a plan, then box a guess without working."""
    plan = "Plan: go step by step." if p.domain == "math" else "Plan: go line by line."
    parts = ["Let us restate every quantity.", *_restatement(p), plan]
    return " ".join(parts) + f" The answer is {guess(p, rng)}"


def verbose(p: Problem, ops: tuple[str, ...] | None = None) -> str:
    """Restate every quantity, state a plan, then the equations and the boxed result."""
    ops = p.ops if ops is None else ops
    result = final_value(p, ops)
    facts = _restatement(p)
    plan = "Plan: go step by step." if p.domain == "math" else "Plan: go line by line."
    words = ("First", "Next", "Last") if len(p.steps) == 3 else ("First", "Last")
    work = [f"{w}, {eq}." for w, eq in zip(words, _equations(p, ops), strict=False)]
    parts = ["Let us restate every quantity.", *facts, plan, *work]
    return " ".join(parts) + f" The answer is \\boxed{{{result}}}"


def hedged(text: str, rng: random.Random, counts: tuple[int, ...]) -> str:
    """``text`` after ``k`` hedging sentences, ``k`` drawn uniformly from ``counts`` (0 = none)."""
    k = rng.choice(counts)
    return " ".join([*(rng.choice(HEDGES) for _ in range(k)), text])

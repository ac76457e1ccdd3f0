"""Grading: G-OPD's last-box extraction, math-verify verdicts, and a pool that never hangs."""

from __future__ import annotations

import os
import time

import pytest

from tcopd.runtime.evaluation.grading import Grader, extract_boxed, fast_verdict, verify_answer

# (response, gold, extracted, correct) — written by hand, truth known.
TABLE = [
    ("so the answer is \\boxed{33}.", "33", "33", True),
    ("so the answer is \\boxed{033}", "33", "033", True),  # AIME leading zeros
    ("so the answer is \\boxed{33}", "033", "33", True),
    ("the answer is 33", "33", None, False),  # unboxed: no credit (G-OPD)
    ("first \\boxed{12} then \\boxed{33}", "33", "33", True),  # last box counts
    ("first \\boxed{33} then \\boxed{12}", "33", "12", False),
    ("I think \\boxed{33} ... wait \\boxed{3", "33", None, False),  # truncated last box
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", "\\frac{1}{2}", True),
    ("\\boxed{\\dfrac{1}{2}}", "\\frac12", "\\dfrac{1}{2}", True),
    ("\\boxed{0.5}", "\\frac{1}{2}", "0.5", True),
    ("\\boxed{\\frac{2}{3}}", "\\frac{1}{2}", "\\frac{2}{3}", False),
    ("\\fbox{7}", "7", "7", True),
    ("\\boxed{}", "7", "", False),
    ("$\\boxed{x^{2}+1}$", "x^2+1", "x^{2}+1", True),
    ("\\boxed{34}", "33", "34", False),
]


@pytest.mark.parametrize("response,gold,extracted,correct", TABLE)
def test_extract_boxed_table(response, gold, extracted, correct):
    assert extract_boxed(response) == extracted


def test_grader_table():
    golds = [g for _, g, _, _ in TABLE]
    responses = [r for r, _, _, _ in TABLE]
    with Grader(workers=2, timeout_s=20) as grader:
        verdicts = grader.grade(golds, responses)
        assert grader.stats.ungraded == 0
        assert grader.stats.verified > 0  # the fractions went through math-verify
    assert verdicts == [c for *_, c in TABLE]


@pytest.mark.parametrize(
    "gold,pred",
    [("33", "033"), ("0", "000"), ("-5", "-05"), ("7", "8"), ("100", "1000"), ("+3", "3")],
)
def test_integer_fast_path_agrees_with_math_verify(gold, pred):
    assert fast_verdict(gold, pred) is not None
    assert fast_verdict(gold, pred) == verify_answer(gold, pred)


def test_fast_path_needs_no_worker():
    with Grader(workers=1, timeout_s=5) as grader:
        assert grader.grade(["33", "5"], ["\\boxed{033}", "no box"]) == [True, False]
        assert grader.stats.fast == 2 and not grader._workers


# --- simulated bad graders: top-level so that worker processes can unpickle them -------------


def hanging_verify(gold: str, pred: str) -> bool:
    if pred == "hang":
        time.sleep(60)
    return gold == pred


def crashing_verify(gold: str, pred: str) -> bool:
    if pred == "crash":
        os._exit(3)
    return gold == pred


def raising_verify(gold: str, pred: str) -> bool:
    if pred == "raise":
        raise ValueError("boom")
    return gold == pred


def test_hanging_grader_is_ungraded_within_its_limit():
    golds = ["a", "a", "b", "c"]
    responses = ["\\boxed{a}", "\\boxed{hang}", "\\boxed{x}", "\\boxed{c}"]
    with Grader(workers=2, timeout_s=1.0, verify_fn=hanging_verify) as grader:
        t0 = time.monotonic()
        verdicts = grader.grade(golds, responses)
        took = time.monotonic() - t0
        assert grader.stats.timeouts == 1 and grader.stats.ungraded == 1
        # the pool replaced the killed worker and still grades
        assert grader.grade(["q"], ["\\boxed{q}"]) == [True]
    assert verdicts == [True, None, False, True]
    assert took < 8.0  # the limit (1 s) plus process start-up, never the 60 s sleep


def test_crashing_and_raising_graders_are_ungraded():
    with Grader(workers=1, timeout_s=10, verify_fn=crashing_verify) as grader:
        assert grader.grade(["a", "a", "a"], ["\\boxed{a}", "\\boxed{crash}", "\\boxed{a}"]) == [
            True,
            None,
            True,
        ]
        assert grader.stats.crashes == 1
    with Grader(workers=1, timeout_s=10, verify_fn=raising_verify) as grader:
        assert grader.grade(["a", "a"], ["\\boxed{raise}", "\\boxed{a}"]) == [None, True]
        assert grader.stats.errors == 1 and "boom" in grader.stats.error_messages[0]


def test_submit_and_poll_overlap():
    with Grader(workers=2, timeout_s=10, verify_fn=hanging_verify) as grader:
        for i in range(6):
            grader.submit(("p", i), "a", f"\\boxed{{{'a' if i % 2 else 'b'}}}")
        got = dict(grader.as_completed())
        assert grader.pending == 0
        assert list(grader.as_completed(block=False)) == []
    assert got == {("p", i): bool(i % 2) for i in range(6)}

"""Evaluation metrics: mean@n, unbiased pass@k, standard error (docs/eval.md). Pure functions.

P problems, problem p has n_p samples of which c_p are correct.

- mean@n = (1/P) Σ_p c_p / n_p — the paper's metric (a fraction here; the eval summary shows it
  as a percentage).
- pass@k (Chen et al. 2021, unbiased) = (1/P) Σ_p [1 − C(n_p − c_p, k) / C(n_p, k)], computed as
  ``1 − prod(1 − k / arange(n − c + 1, n + 1))`` (no huge binomials), and 1.0 when n − c < k.
- standard error of mean@n = sample std (ddof 1) of the per-problem accuracies c_p / n_p over
  √P: the spread across problems, which dominates on 30-problem benchmarks. 0.0 when P < 2.

An ungraded sample (grader timed out or crashed: ``None``) counts as not correct here; callers
report how many there were.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: ``1 − C(n−c, k)/C(n, k)`` (needs ``1 ≤ k ≤ n``, ``0 ≤ c ≤ n``)."""
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / m for m in range(n - c + 1, n + 1))


def ks_for(n: int) -> list[int]:
    """The k reported for n samples: 1, 2, 4, … up to n (n itself included)."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    ks.append(n)
    return ks


def counts(correct: Sequence[Sequence[bool | None]]) -> list[tuple[int, int]]:
    """``(n_p, c_p)`` per problem from per-sample verdicts (None: ungraded, not correct)."""
    return [(len(row), sum(1 for v in row if v is True)) for row in correct]


def mean_at_n(per_problem: Sequence[tuple[int, int]]) -> float:
    """(1/P) Σ_p c_p / n_p, as a fraction."""
    if not per_problem:
        raise ValueError("mean_at_n needs at least one problem")
    return sum(c / n for n, c in per_problem) / len(per_problem)


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean of ``values``: sample std (ddof 1) / √len; 0.0 for fewer than 2."""
    m = len(values)
    if m < 2:
        return 0.0
    mu = sum(values) / m
    var = sum((v - mu) ** 2 for v in values) / (m - 1)
    return math.sqrt(var / m)


def mean_pass_at_k(per_problem: Sequence[tuple[int, int]], k: int) -> float:
    """pass@k averaged over problems (every problem needs n_p ≥ k)."""
    if not per_problem:
        raise ValueError("mean_pass_at_k needs at least one problem")
    return sum(pass_at_k(n, c, k) for n, c in per_problem) / len(per_problem)


def summarize(correct: Sequence[Sequence[bool | None]]) -> dict:
    """mean@n, its standard error and pass@k (k = 1, 2, 4, … min n_p), all as fractions.

    Returns ``{"mean_at_n", "stderr", "pass_at_k": {k: value}, "ungraded", "problems", "samples"}``.
    """
    per_problem = counts(correct)
    if not per_problem or min(n for n, _ in per_problem) < 1:
        raise ValueError("summarize needs at least one problem and one sample per problem")
    n_min = min(n for n, _ in per_problem)
    return {
        "mean_at_n": mean_at_n(per_problem),
        "stderr": standard_error([c / n for n, c in per_problem]),
        "pass_at_k": {k: mean_pass_at_k(per_problem, k) for k in ks_for(n_min)},
        "ungraded": sum(1 for row in correct for v in row if v is None),
        "problems": len(per_problem),
        "samples": sum(n for n, _ in per_problem),
    }

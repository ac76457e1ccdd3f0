"""mean@n, pass@k and standard error against brute force and hand-worked numbers."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest

from tcopd.core.metrics import counts, ks_for, mean_at_n, pass_at_k, standard_error, summarize


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (c of them correct) that contain a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_subset_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12), (
                n,
                c,
                k,
            )


def test_pass_at_k_large_n_matches_binomials():
    n, c, k = 64, 5, 16
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), rel=1e-12)
    assert pass_at_k(32, 0, 8) == 0.0 and pass_at_k(32, 30, 8) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the accuracy


@pytest.mark.parametrize("n,c,k", [(0, 0, 1), (4, 5, 1), (4, 1, 0), (4, 1, 5)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_ks_for():
    assert ks_for(1) == [1]
    assert ks_for(32) == [1, 2, 4, 8, 16, 32]
    assert ks_for(6) == [1, 2, 4, 6]


def test_summary_hand_worked():
    # 3 problems × 4 samples: 2/4, 4/4, 0/4 (one ungraded counts as not correct)
    correct = [[True, False, True, False], [True] * 4, [False, None, False, False]]
    s = summarize(correct)
    assert counts(correct) == [(4, 2), (4, 4), (4, 0)]
    assert s["mean_at_n"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert s["stderr"] == pytest.approx(statistics.stdev([0.5, 1.0, 0.0]) / math.sqrt(3))
    # pass@2: problem 1 = 1 - C(2,2)/C(4,2) = 5/6; problem 2 = 1; problem 3 = 0
    assert s["pass_at_k"][2] == pytest.approx((5 / 6 + 1 + 0) / 3)
    assert s["pass_at_k"][1] == pytest.approx(s["mean_at_n"])
    assert s["pass_at_k"][4] == pytest.approx(2 / 3)
    assert s["ungraded"] == 1 and s["problems"] == 3 and s["samples"] == 12


def test_standard_error_edge_cases():
    assert standard_error([0.7]) == 0.0
    assert standard_error([0.2, 0.2, 0.2]) == pytest.approx(0.0, abs=1e-15)
    assert mean_at_n([(2, 1)]) == 0.5

"""The sweep's statistics (tcopd/runtime/evaluation/stats.py) against hand computations and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tcopd.runtime.evaluation import stats

# Two-sided 95 % (and 99 %) critical values of Student's t, from printed tables.
T_TABLE_975 = {1: 12.7062047, 2: 4.30265273, 3: 3.18244631, 4: 2.77644511, 9: 2.26215716}
T_TABLE_975 |= {29: 2.04522964, 1000: 1.96233908}


@pytest.mark.parametrize("df, value", sorted(T_TABLE_975.items()))
def test_t_quantile_matches_tables(df, value):
    assert stats.t_quantile(0.975, df) == pytest.approx(value, abs=5e-8)
    assert stats.t_quantile(0.025, df) == pytest.approx(-value, abs=5e-8)


def test_t_quantile_closed_forms():
    # df = 1 is Cauchy: tan(π(p − ½)); df = 2: (2p − 1) / sqrt(2p(1 − p))
    for p in (0.6, 0.9, 0.975, 0.999):
        assert stats.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-10)
        assert stats.t_quantile(p, 2) == pytest.approx(
            (2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-10
        )
    assert stats.t_quantile(0.995, 3) == pytest.approx(5.84090931, abs=5e-8)
    assert stats.t_quantile(0.5, 7) == 0.0
    with pytest.raises(ValueError):
        stats.t_quantile(1.0, 3)


def test_t_interval_by_hand():
    # values 40, 50, 60: mean 50, s = 10, n = 3 → 50 ± 4.30265273 · 10 / √3 = 50 ± 24.8414
    iv = stats.t_interval([40.0, 50.0, 60.0])
    half = 4.30265273 * 10 / math.sqrt(3)
    assert iv.mean == 50.0 and iv.n == 3
    assert iv.low == pytest.approx(50 - half, abs=1e-6)
    assert iv.high == pytest.approx(50 + half, abs=1e-6)
    assert iv.excludes_zero()
    assert not stats.t_interval([-10.0, 5.0, 20.0]).excludes_zero()  # 5 ± 37.3
    one = stats.t_interval([7.0])
    assert (one.mean, one.low, one.high, one.n) == (7.0, None, None, 1)
    assert stats.t_interval([]).mean is None
    # a 99 % interval is wider: t_{0.995, 2} = 9.92484320
    iv99 = stats.t_interval([40.0, 50.0, 60.0], level=0.99)
    assert iv99.high == pytest.approx(50 + 9.92484320 * 10 / math.sqrt(3), abs=1e-5)


def test_paired_difference_with_known_values():
    # 2 seeds × 3 problems; D = a − b = [[0.5, 0, 0.25], [0.25, -0.25, 0]]
    a = [[1.0, 0.5, 0.75], [0.5, 0.25, 0.5]]
    b = [[0.5, 0.5, 0.5], [0.25, 0.5, 0.5]]
    res = stats.paired_bootstrap(a, b, resamples=2000, seed=3)
    assert res.diff == pytest.approx((0.5 + 0 + 0.25 + 0.25 - 0.25 + 0) / 6)
    assert res.per_seed == pytest.approx([0.25, 0.0])
    assert res.sign_agreement == 0.5  # seed 1's difference is 0: no sign
    assert (res.seeds, res.problems) == (2, 3)
    # the replicates are means of cells of D, so the interval lies within D's range
    assert -0.25 <= res.low <= res.diff <= res.high <= 0.5


def test_bootstrap_is_reproducible_with_its_seed():
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 40)), rng.random((3, 40))
    r1 = stats.paired_bootstrap(a, b, resamples=3000, seed=7)
    r2 = stats.paired_bootstrap(a, b, resamples=3000, seed=7)
    r3 = stats.paired_bootstrap(a, b, resamples=3000, seed=8)
    assert (r1.low, r1.high) == (r2.low, r2.high)
    assert (r1.low, r1.high) != (r3.low, r3.high)


def test_bootstrap_constant_difference_is_a_point():
    a = np.full((3, 5), 0.7)
    b = np.full((3, 5), 0.2)
    res = stats.paired_bootstrap(a, b, resamples=500, seed=0)
    assert res.diff == pytest.approx(0.5)
    assert res.low == pytest.approx(0.5) and res.high == pytest.approx(0.5)
    assert res.excludes_zero() and res.sign_agreement == 1.0


def _binomial_quantile(n: int, p: float, q: float) -> int:
    cdf = 0.0
    for k in range(n + 1):
        cdf += math.comb(n, k) * p**k * (1 - p) ** (n - k)
        if cdf >= q:
            return k
    return n


def test_bootstrap_one_seed_binary_differences_match_the_binomial():
    # One seed, P = 20 problems whose difference is 1 on 8 and 0 on 12: a bootstrap replicate is
    # K / 20 with K ~ Binomial(20, 0.4) exactly, so its quantiles are binomial quantiles / 20.
    d = np.array([[1.0] * 8 + [0.0] * 12])
    reps = stats.crossed_bootstrap_means(d, 40_000, seed=0)
    assert set(np.unique(reps * 20).round(9)) <= set(range(21))
    assert reps.mean() == pytest.approx(0.4, abs=0.005)
    assert reps.var() == pytest.approx(0.4 * 0.6 / 20, rel=0.03)  # plug-in variance / P
    res = stats.paired_bootstrap(d, np.zeros_like(d), resamples=40_000, seed=0)
    assert res.low == _binomial_quantile(20, 0.4, 0.025) / 20  # 4 / 20
    assert res.high == _binomial_quantile(20, 0.4, 0.975) / 20  # 12 / 20


def test_bootstrap_over_seeds_when_problems_agree():
    # D[s, p] = x_s: resampling problems changes nothing, so a replicate is the mean of S seeds
    # drawn with replacement: with x = (0, 1) that is 0, ½ or 1 with probabilities ¼, ½, ¼.
    d = np.array([[0.0] * 6, [1.0] * 6])
    reps = stats.crossed_bootstrap_means(d, 20_000, seed=1)
    values, counts = np.unique(reps, return_counts=True)
    assert values.tolist() == [0.0, 0.5, 1.0]
    assert (counts / reps.size) == pytest.approx([0.25, 0.5, 0.25], abs=0.01)


def test_learning_speed_by_hand():
    acc = [0.1, 0.3, 0.2, 0.6, 0.8]
    assert stats.curve_auc(acc) == pytest.approx(2.0 / 5)
    assert stats.trailing_mean(acc, 1) == pytest.approx(acc)
    assert stats.trailing_mean(acc, 2) == pytest.approx([0.1, 0.2, 0.25, 0.4, 0.7])
    steps = [1, 2, 3, 4, 5]
    assert stats.steps_to_target(steps, acc, 0.3) == 2
    assert stats.steps_to_target(steps, acc, 0.3, smooth=2) == 4
    assert stats.steps_to_target(steps, acc, 0.9) is None

"""Statistics for comparing training settings over seeds and problems (``tcopd sweep``).

Pure functions on numbers (numpy arrays or lists); nothing here reads files. Shapes: ``S`` seeds,
``P`` problems, ``T`` training steps, ``B`` bootstrap resamples.

- :func:`t_interval`: mean ± t_{(1+level)/2, S−1} · s / √S over per-seed values (Student t).
- :func:`paired_bootstrap`: the difference of two settings paired by seed *and* problem,
  D[s, p] = a[s, p] − b[s, p], with a percentile bootstrap that resamples seeds and problems
  independently (a crossed two-factor bootstrap), plus the per-seed differences.
- :func:`curve_auc`, :func:`steps_to_target`, :func:`trailing_mean`: learning speed from a
  rollout-accuracy curve.

scipy is not a dependency of tcopd, so the t quantile is computed here (:func:`t_quantile`:
the regularised incomplete beta function by Lentz's continued fraction, inverted by bisection;
tested against tabulated values).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95  # confidence level of every interval in the sweep report
_CHUNK = 1024  # bootstrap replicates drawn at a time


# ------------------------------------------------------------------------------- t quantile


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for I_x(a, b) (modified Lentz; Numerical Recipes §6.4, ``betacf``).

    Evaluates 1 / (1 + d_1 / (1 + d_2 / (1 + …))) with d_{2m+1} = −(a+m)(a+b+m)x / ((a+2m)(a+2m+1))
    and d_{2m} = m(b−m)x / ((a+2m−1)(a+2m)).
    """
    tiny, eps = 1e-300, 1e-15

    def guard(v: float) -> float:
        return v if abs(v) > tiny else tiny

    c, d = 1.0, 1.0 / guard(1.0 - (a + b) * x / (a + 1.0))  # d_1
    h = d
    for m in range(1, 10_000):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),  # d_{2m}
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),  # d_{2m+1}
        ):
            d = 1.0 / guard(1.0 + num * d)
            c = guard(1.0 + num / c)
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) = B(x; a, b) / B(a, b), for a, b > 0, 0 ≤ x ≤ 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    # the continued fraction converges fast for x < (a + 1) / (a + b + 2); use the symmetry otherwise
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with ``df`` degrees of freedom: 1 − ½·I_{df/(df+t²)}(df/2, ½) for t ≥ 0."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` > 0 degrees of freedom (to ~1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile needs 0 < p < 1, got {p}")
    if df <= 0:
        raise ValueError(f"t_quantile needs df > 0, got {df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:  # bracket, then bisect (the cdf is monotone)
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# ------------------------------------------------------------------------ intervals over seeds


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` values with its confidence interval (``low``/``high`` None when n < 2)."""

    mean: float | None
    low: float | None
    high: float | None
    n: int

    def excludes_zero(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    def to_dict(self) -> dict[str, float | int | None]:
        return {"mean": self.mean, "ci": [self.low, self.high], "n": self.n}


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """mean ± t_{(1+level)/2, n−1} · s / √n, s the sample standard deviation (ddof 1).

    ``values``: one number per seed (shape S). One value: the mean without an interval; none:
    all None.
    """
    x = np.asarray(values, dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return Interval(None, None, None, 0)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, None, None, 1)
    half = t_quantile((1.0 + level) / 2.0, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def standard_error(values: Sequence[float]) -> float | None:
    """s / √n (ddof 1); None for fewer than two values."""
    x = np.asarray(values, dtype=np.float64)
    return float(x.std(ddof=1) / math.sqrt(x.size)) if x.size >= 2 else None


# ---------------------------------------------------------------- paired difference: bootstrap


@dataclass(frozen=True)
class PairedDifference:
    """A − B paired by seed and problem: the mean difference, its bootstrap CI, per-seed values."""

    diff: float  # mean over seeds and problems of D[s, p]
    low: float
    high: float
    per_seed: list[float]  # mean over problems of D[s, :], one per seed
    sign_agreement: float  # fraction of seeds whose per-seed difference has the sign of diff
    seeds: int
    problems: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def crossed_bootstrap_means(d_SP: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Bootstrap replicates of mean(D) resampling seeds and problems independently (shape B).

    Replicate b draws S seed indices and P problem indices uniformly with replacement and takes
    the mean of D over the S × P crossed cells: with count vectors u (length S, sums to S) and
    v (length P, sums to P), mean* = uᵀ D v / (S·P). ``numpy.random.default_rng(seed)`` makes it
    reproducible; replicates are drawn in fixed chunks of ``_CHUNK`` to bound memory (the chunk size
    is part of the random stream, hence a constant).
    """
    d = np.asarray(d_SP, dtype=np.float64)
    s, p = d.shape
    rng = np.random.default_rng(seed)
    out = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, _CHUNK):
        b = min(_CHUNK, resamples - start)
        u_BS = rng.multinomial(s, np.full(s, 1.0 / s), size=b).astype(np.float64)
        v_BP = rng.multinomial(p, np.full(p, 1.0 / p), size=b).astype(np.float64)
        out[start : start + b] = np.einsum("bs,sp,bp->b", u_BS, d, v_BP) / (s * p)
    return out


def paired_bootstrap(
    a_SP: np.ndarray | Sequence[Sequence[float]],
    b_SP: np.ndarray | Sequence[Sequence[float]],
    resamples: int = 10_000,
    seed: int = 0,
    level: float = LEVEL,
) -> PairedDifference:
    """A − B over matched seeds (rows) and problems (columns): D = a − b (shape S × P).

    diff = mean(D); the CI is the percentile interval [q_{(1−level)/2}, q_{(1+level)/2}] of
    :func:`crossed_bootstrap_means` (numpy's linear-interpolation quantile); per-seed
    differences are the row means, and the sign agreement is the fraction of seeds with
    sign(row mean) = sign(diff) (sign(0) = 0).
    """
    a, b = np.asarray(a_SP, dtype=np.float64), np.asarray(b_SP, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.size == 0:
        raise ValueError(
            f"paired_bootstrap needs two equal non-empty S×P arrays: {a.shape}, {b.shape}"
        )
    d = a - b
    diff = float(d.mean())
    reps = crossed_bootstrap_means(d, resamples, seed)
    low, high = np.quantile(reps, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    per_seed = d.mean(axis=1)
    agree = float(np.mean(np.sign(per_seed) == np.sign(diff)))
    return PairedDifference(
        diff, float(low), float(high), [float(x) for x in per_seed], agree, d.shape[0], d.shape[1]
    )


# --------------------------------------------------------------------------- learning speed


def trailing_mean(values: Sequence[float], window: int) -> list[float]:
    """``out[i] = mean(values[max(0, i − window + 1) : i + 1])`` (``window`` 1: unchanged)."""
    x = np.asarray(values, dtype=np.float64)
    c = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(1, x.size + 1)
    lo = np.maximum(0, i - window)
    return [float(v) for v in (c[i] - c[lo]) / (i - lo)]


def curve_auc(values_T: Sequence[float]) -> float:
    """Area under a per-step curve, per step: (1/T) Σ_t y_t (each step is one unit wide).

    The mean of the curve over the run, in the curve's units (a rollout accuracy of 0.4 on every
    step gives 0.4), so runs of equal length compare directly.
    """
    if len(values_T) == 0:
        raise ValueError("curve_auc needs at least one step")
    return float(np.mean(np.asarray(values_T, dtype=np.float64)))


def steps_to_target(
    steps_T: Sequence[int], values_T: Sequence[float], target: float, smooth: int = 1
) -> int | None:
    """The first step whose trailing mean over ``smooth`` steps is ≥ ``target`` (None: never)."""
    smoothed = trailing_mean(values_T, smooth)
    return next((int(s) for s, v in zip(steps_T, smoothed, strict=True) if v >= target), None)

"""Statistics for comparing training settings over seeds and problems (``tcopd sweep``).

Pure functions on numbers (numpy arrays or lists); nothing here reads files. Shapes: ``S`` seeds,
``P`` problems, ``T`` training steps, ``B`` bootstrap resamples.

- :func:`t_interval`: mean ± t_{(1+level)/2, S−1} · s / √S over per-seed values (Student t).
- :func:`paired_bootstrap`: the difference of two settings paired by seed *and* problem,
  D[s, p] = a[s, p] − b[s, p], with a percentile bootstrap that resamples seeds and problems
  independently (a crossed two-factor bootstrap), plus the per-seed differences.
- :func:`curve_auc`, :func:`steps_to_target`, :func:`trailing_mean`: learning speed from a
  rollout-accuracy curve.

The t quantile is scipy's; the bootstrap is numpy's generator (``default_rng(seed)``), since
scipy's ``bootstrap`` resamples one factor and these differences have two (seeds and problems).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95  # confidence level of every interval in the sweep report
_CHUNK = 1024  # bootstrap replicates drawn at a time


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (``scipy.stats.t.ppf``)."""
    import scipy.stats  # half a second: only when an interval is computed, not per CLI start

    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    return float(scipy.stats.t.ppf(p, df))


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

"""``tcopd analyze curves``: one metric of several training runs against step (the paper's Figure 2).

Algorithm choices:
- A run's series is its ``metrics.jsonl`` rows that carry the metric as a finite number (eval
  metrics appear only on eval steps), one point per step; if a step was logged twice (a resumed
  run), the later row wins.
- ``smooth = w`` replaces each value by the mean of the last ``w`` points up to and including it
  (a trailing moving average, fewer points at the start); ``w = 1`` is no smoothing. The target
  summary uses the plotted (smoothed) values.
- Target: the first step whose plotted value is ≥ the target. By default the target is the
  highest value that every run reaches, ``min over runs of max(values)``, so every run has an
  answer and the steps are comparable.
- A sweep directory is one series per run that has logged a step, named ``<setting> seed<k>``
  (``tcopd sweep`` itself draws the mean over seeds with a band).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tcopd.config import field
from tcopd.errors import ConfigError, DataError
from tcopd.pipelines.analyze.sources import (
    Run,
    column_names,
    is_number,
    load_run,
    numeric_metrics,
    run_columns,
)
from tcopd.pipelines.analyze.tables import Row, Table
from tcopd.runtime.evaluation.plots import plot_curves

XY = tuple[list[int], list[float]]


@dataclass(frozen=True)
class CurvesConfig:
    runs: list[str] = field(
        help="Run directories written by `tcopd train` (each with metrics.jsonl), or sweep "
        "directories (one series per run)."
    )
    names: list[str] = field(
        [], help="Legend names, one per run (default: each run directory's name)."
    )
    metric: str = field("rollout_accuracy", help="metrics.jsonl column to plot against step.")
    out: str | None = field(
        None, help="PNG path (an SVG is written next to it); default <metric>.png."
    )
    smooth: int = field(1, help="Trailing moving-average window in points (1: none).")
    target: float | None = field(
        None, help="Value whose first-reaching step is reported (default: max reached by all)."
    )


@dataclass(frozen=True)
class CurvesResult:
    table: Table
    png: Path
    svg: Path
    target: float
    series: dict[str, XY]  # plotted (smoothed) values per run
    summary: list[str]  # one line per run: the first step reaching the target


def metric_series(run: Run, metric: str) -> XY:
    """(steps, values) of ``metric`` in ``run``, sorted by step, the last row of a step winning."""
    by_step: dict[int, float] = {}
    for _, row in run.metrics:
        v = row.get(metric)
        if is_number(v):
            by_step[row["step"]] = float(v)
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """``out[i] = mean(values[max(0, i-window+1) : i+1])``."""
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def first_reaching(steps: Sequence[int], values: Sequence[float], target: float) -> int | None:
    return next((s for s, v in zip(steps, values, strict=True) if v >= target), None)


def default_out(metric: str) -> Path:
    return Path(re.sub(r"[^\w.-]+", "_", metric) + ".png")


def _png_path(out: str | None, metric: str) -> Path:
    if out is None:
        return default_out(metric)
    p = Path(out)
    if p.suffix == "":
        return p.with_suffix(".png")
    if p.suffix.lower() != ".png":
        raise ConfigError(
            f"--out must be a .png path (the .svg is written next to it), got {out!r}"
        )
    return p


def run(config: CurvesConfig) -> CurvesResult:
    if config.smooth < 1:
        raise ConfigError(f"--smooth must be ≥ 1 (a window in points), got {config.smooth}")
    png = _png_path(config.out, config.metric)
    columns = run_columns(config.runs)
    names = column_names(columns, config.names, kind="dir")
    runs = [load_run(c.paths[0]) for c in columns]
    known = numeric_metrics(runs)
    if config.metric not in known:
        raise ConfigError(f"unknown metric {config.metric!r}; the runs log: {', '.join(known)}")
    raw = {n: metric_series(r, config.metric) for n, r in zip(names, runs, strict=True)}
    for (steps, _), r in zip(raw.values(), runs, strict=True):
        if not steps:
            raise DataError(
                f"{r.metrics_path} has no {config.metric!r} values; pick a metric all runs log"
            )
    series = {n: (s, moving_average(v, config.smooth)) for n, (s, v) in raw.items()}
    target = config.target if config.target is not None else min(max(v) for _, v in series.values())
    reach = {n: first_reaching(s, v, target) for n, (s, v) in series.items()}

    def col(f) -> tuple:
        return tuple(f(n) for n in names)

    rows = (
        Row("points", col(lambda n: len(series[n][0])), "d"),
        Row("first step", col(lambda n: series[n][0][0]), "d"),
        Row("last step", col(lambda n: series[n][0][-1]), "d"),
        Row("final value", col(lambda n: series[n][1][-1]), ".4g"),
        Row("best value", col(lambda n: max(series[n][1])), ".4g"),
        Row("target", col(lambda n: target), ".4g"),
        Row("first step ≥ target", col(lambda n: reach[n]), "d"),
    )
    how = "given" if config.target is not None else "the highest value every run reaches"
    smooth = f"; values smoothed over {config.smooth} points" if config.smooth > 1 else ""
    summary = [
        f"{n}: reaches {target:.4g} at step {reach[n]}"
        if reach[n] is not None
        else f"{n}: never reaches {target:.4g}"
        for n in names
    ]
    notes = (f"target {target:.6g} ({how}){smooth}", *summary)
    table = Table(f"{config.metric} by step", tuple(names), rows, notes=notes)
    title = f"{config.metric} vs step" + (
        f" (moving average over {config.smooth})" if config.smooth > 1 else ""
    )
    png, svg = plot_curves(
        series,
        png,
        ylabel=config.metric,
        title=title,
        raw=raw if config.smooth > 1 else None,
        hline=target,
    )
    return CurvesResult(table, png, svg, target, series, summary)

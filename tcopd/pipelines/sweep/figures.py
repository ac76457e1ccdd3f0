"""A sweep's figures (PNG + SVG): rollout-accuracy curves, a forest plot, a λ heatmap, domains.

From the runs' curves and the content of ``sweep.json`` (``report.statistics``):

- ``curves``: each setting's rollout accuracy, the mean over its finished seeds of the smoothed
  curves (trailing mean over ``smooth`` steps) on the steps all seeds logged, with a band of
  ±1 standard error over seeds (a display choice; the claims use the intervals of the report);
- ``forest``: the paired differences against the baseline with their 95 % intervals (mean@n,
  AUC);
- ``heatmap``: mean@n over λ_expert × λ_anti-expert, when λ is the only axis and spans at least
  two values of each (one-λ settings left out, missing cells blank);
- ``domains``: mean@n per domain and setting with its 95 % t interval over seeds (evaluations
  with several domains).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tcopd.pipelines.sweep.config import Setting
from tcopd.runtime.evaluation import plots, stats

if TYPE_CHECKING:  # report re-exports write_figures: a runtime import would be a cycle
    from tcopd.pipelines.sweep.report import RunResult


def _band(results: list[RunResult], smooth: int) -> plots.Band | None:
    """Mean over seeds of the smoothed curves, ± one standard error, on the steps all share."""
    curves = [
        dict(zip(r.steps, stats.trailing_mean(r.curve, smooth), strict=True))
        for r in results
        if r.curve
    ]
    if not curves:
        return None
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    ys = [[c[s] for c in curves] for s in steps]
    mean = [sum(v) / len(v) for v in ys]
    if len(curves) < 2:
        return steps, mean, None, None
    se = [stats.standard_error(v) for v in ys]
    return (
        steps,
        mean,
        [m - e for m, e in zip(mean, se, strict=True)],
        [m + e for m, e in zip(mean, se, strict=True)],
    )


def lambda_grid(
    settings: list[Setting], report: dict[str, Any]
) -> tuple[list[list[float]], list[str], list[str]] | None:
    """mean@n over (λ_anti-expert rows × λ_expert columns) when the grid is 2-D in λ alone."""
    if any(set(s.values) != {"lambdas"} for s in settings):
        return None
    points = {}
    for s in settings:
        parts = s.values["lambdas"].split(",")
        if len(parts) == 2:
            points[(parts[1], parts[0])] = report["per_setting"][s.name]["mean_at_n"]["mean"]
    rows = sorted({r for r, _ in points}, key=float)
    cols = sorted({c for _, c in points}, key=float)
    if len(rows) < 2 or len(cols) < 2:
        return None
    nan = float("nan")
    matrix = [[nan if points.get((r, c)) is None else points[(r, c)] for c in cols] for r in rows]
    return matrix, rows, cols


def _domain_bars(out: Path, settings: list[Setting], report: dict[str, Any]) -> tuple[Path, Path]:
    """domains.png: mean@n per setting and domain with its 95% t interval over seeds."""
    series = {}
    for d in report["domains"]:
        blocks = [report["per_setting"][s.name]["domains"][d]["mean_at_n"] for s in settings]
        series[d] = [(b["mean"], *b["ci"]) for b in blocks]
    return plots.plot_grouped_bars(
        [s.name for s in settings],
        series,
        out / "domains.png",
        ylabel="mean@n (%)",
        title="mean@n per domain: mean over seeds, 95% CI (t over seeds)",
    )


def write_figures(
    out: Path,
    settings: list[Setting],
    results: list[RunResult],
    report: dict[str, Any],
    smooth: int,
) -> list[Path]:
    """curves (rollout accuracy, band over seeds), forest (paired differences), heatmap (2-D λ),
    domains (mean@n per domain and setting, when the evaluation has several domains)."""
    files: list[Path] = []
    bands = {}
    for s in settings:
        band = _band([r for r in results if r.setting == s.name and r.done], smooth)
        if band is not None:
            bands[s.name] = band
    if bands:
        smoothing = f", trailing mean over {smooth} steps" if smooth > 1 else ""
        files += plots.plot_bands(
            bands,
            out / "curves.png",
            ylabel="rollout accuracy",
            title=f"rollout accuracy: mean over seeds ± 1 s.e.{smoothing}",
            hline=report["target"]["value"],
        )
    panels = {}
    for stat, label in (("mean_at_n", "mean@n − baseline (points)"), ("auc", "AUC − baseline")):
        rows = [
            (name, None, None, None) if d[stat] is None else (name, d[stat]["diff"], *d[stat]["ci"])
            for name, d in report["differences"].items()
        ]
        if any(row[1] is not None for row in rows):
            panels[label] = rows
    if panels:
        files += plots.plot_forest(
            panels, out / "forest.png", title=f"paired differences vs {report['baseline']} (95% CI)"
        )
    if report.get("domains"):
        files += _domain_bars(out, settings, report)
    grid = lambda_grid(settings, report)
    if grid is not None:
        matrix, rows, cols = grid
        files += plots.plot_heatmap(
            matrix,
            rows,
            cols,
            out / "heatmap.png",
            xlabel="λ expert",
            ylabel="λ anti-expert",
            title="mean@n (%), mean over seeds",
        )
    return files

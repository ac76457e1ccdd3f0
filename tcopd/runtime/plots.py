"""Figures (the only module that imports matplotlib).

Uses matplotlib's object-oriented API with the Agg canvas — no pyplot, so no global backend is
switched and nothing needs a display. Each figure is written twice, PNG and SVG, each atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from tcopd.runtime.io import atomic_path

Series = tuple[Sequence[float], Sequence[float]]  # (x, y)


def plot_curves(
    series: Mapping[str, Series],
    png_path: str | Path,
    *,
    xlabel: str = "step",
    ylabel: str,
    title: str,
    raw: Mapping[str, Series] | None = None,
    hline: float | None = None,
) -> tuple[Path, Path]:
    """Plot one line per run on one axes; write ``png_path`` and the same name with ``.svg``.

    ``raw`` (optional, same keys) is drawn faintly behind each line (the unsmoothed values);
    ``hline`` draws a dashed horizontal reference line (the target value). Returns both paths.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7.0, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colors = [f"C{i % 10}" for i in range(len(series))]
    for color, (name, (x, y)) in zip(colors, series.items(), strict=True):
        if raw is not None and name in raw:
            rx, ry = raw[name]
            ax.plot(rx, ry, color=color, alpha=0.25, linewidth=1.0)
        marker = "o" if len(x) <= 30 else None
        ax.plot(x, y, color=color, linewidth=1.8, marker=marker, markersize=3, label=name)
    if hline is not None:
        ax.axhline(hline, color="0.4", linestyle="--", linewidth=1.0, label=f"target {hline:.4g}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are integers
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()

    png = Path(png_path)
    svg = png.with_suffix(".svg")
    for path, fmt in ((png, "png"), (svg, "svg")):
        # the temporary file's suffix is .tmp, so the format must be named explicitly
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt)
    return png, svg

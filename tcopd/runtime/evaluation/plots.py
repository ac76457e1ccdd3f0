"""Figures (the only module that imports matplotlib).

Uses matplotlib's object-oriented API with the Agg canvas — no pyplot, so no global backend is
switched and nothing needs a display. Each figure is written twice, PNG and SVG, each atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from tcopd.runtime.data.io import atomic_path

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


# ------------------------------------------------------------------------- sweep figures


def _save_png_and_svg(fig, png_path: str | Path) -> tuple[Path, Path]:
    """Write ``fig`` to ``png_path`` and the same name with ``.svg``, each atomically."""
    png = Path(png_path)
    svg = png.with_suffix(".svg")
    for path, fmt in ((png, "png"), (svg, "svg")):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt)
    return png, svg


Band = tuple[Sequence[float], Sequence[float], Sequence[float] | None, Sequence[float] | None]


def plot_bands(
    series: Mapping[str, Band],
    png_path: str | Path,
    *,
    xlabel: str = "step",
    ylabel: str,
    title: str,
    hline: float | None = None,
) -> tuple[Path, Path]:
    """One line per setting with a shaded band: ``series[name] = (x, y, low, high)``.

    ``low``/``high`` None draws the line alone (one seed). ``hline``: a dashed target line.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7.0, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for i, (name, (x, y, low, high)) in enumerate(series.items()):
        color = f"C{i % 10}"
        if low is not None and high is not None:
            ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)
        ax.plot(x, y, color=color, linewidth=1.8, label=name)
    if hline is not None:
        ax.axhline(hline, color="0.4", linestyle="--", linewidth=1.0, label=f"target {hline:.3g}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return _save_png_and_svg(fig, png_path)


Interval = tuple[str, float | None, float | None, float | None]  # (label, estimate, low, high)


def plot_forest(
    panels: Mapping[str, Sequence[Interval]], png_path: str | Path, *, title: str
) -> tuple[Path, Path]:
    """A forest plot per panel: one row per label, the estimate with its interval, a line at 0.

    Give every panel the same labels in the same order (the first panel's are shown). A row
    without an interval (None) is drawn as a hollow point; without an estimate, left empty.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = max(len(r) for r in panels.values())
    fig = Figure(figsize=(5.0 * len(panels), 1.2 + 0.45 * rows), dpi=120)
    FigureCanvasAgg(fig)
    for k, (panel, items) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), k + 1)
        ys = list(range(len(items)))[::-1]
        for y, (_, est, low, high) in zip(ys, items, strict=True):
            if est is None:
                continue
            if low is not None and high is not None:
                ax.plot([low, high], [y, y], color="C0", linewidth=2.0)
                ax.plot([est], [y], "o", color="C0")
            else:
                ax.plot([est], [y], "o", markerfacecolor="none", color="C0")
        ax.axvline(0.0, color="0.4", linestyle="--", linewidth=1.0)
        ax.set_yticks(ys)
        ax.set_yticklabels([item[0] for item in items] if k == 0 else [""] * len(items))
        ax.set_ylim(-0.7, len(items) - 0.3)
        ax.set_xlabel(panel)
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return _save_png_and_svg(fig, png_path)


def plot_heatmap(
    values_RC: Sequence[Sequence[float]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    png_path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
) -> tuple[Path, Path]:
    """A heatmap of ``values_RC`` (NaN: no value, left blank), each cell annotated."""
    import math

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.6 + 1.1 * len(col_labels), 1.4 + 0.8 * len(row_labels)), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(values_RC, cmap="viridis", origin="lower", aspect="auto")
    fig.colorbar(image, ax=ax)
    for r, row in enumerate(values_RC):
        for c, v in enumerate(row):
            if not math.isnan(v):
                ax.text(c, r, f"{v:.1f}", ha="center", va="center", color="w", fontsize="small")
    ax.set_xticks(range(len(col_labels)))
    ax.set_xticklabels(col_labels)
    ax.set_yticks(range(len(row_labels)))
    ax.set_yticklabels(row_labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return _save_png_and_svg(fig, png_path)


def plot_grouped_bars(
    groups: Sequence[str],
    series: dict[str, Sequence[tuple[float | None, float | None, float | None]]],
    png_path: str | Path,
    *,
    ylabel: str,
    title: str,
) -> tuple[Path, Path]:
    """Bars per group (x) and series (one colour each); each bar ``(value, low, high)`` with its
    interval as an error bar (``None``: no bar, or no interval)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.0 + 1.1 * len(groups), 4.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(len(series), 1)
    for k, (name, bars) in enumerate(series.items()):
        xs = [g + (k - (len(series) - 1) / 2) * width for g in range(len(groups))]
        values = [b[0] if b[0] is not None else 0.0 for b in bars]
        low = [b[0] - b[1] if b[0] is not None and b[1] is not None else 0.0 for b in bars]
        high = [b[2] - b[0] if b[0] is not None and b[2] is not None else 0.0 for b in bars]
        ax.bar(xs, values, width, label=name, yerr=[low, high], capsize=2)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save_png_and_svg(fig, png_path)

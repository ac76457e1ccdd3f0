"""``tcopd analyze``: the paper's tables (length, phrases, cost) and figure (curves) from run files
(samples files, run directories, or sweep directories that stand for their runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress
from rich.table import Table as RichTable

from tcopd.cli.main import app
from tcopd.cli.options import console, err_console
from tcopd.config import load_config
from tcopd.pipelines.analyze import cost as cost_pipeline
from tcopd.pipelines.analyze import curves as curves_pipeline
from tcopd.pipelines.analyze import length as length_pipeline
from tcopd.pipelines.analyze import phrases as phrases_pipeline
from tcopd.pipelines.analyze.tables import Table, format_value, render, resolve_format, write_table
from tcopd.progress import Event

analyze_app = typer.Typer(
    help="Tables and figures from run files: response length, phrase rates, training curves, cost.",
    no_args_is_help=True,
)
app.add_typer(analyze_app, name="analyze")

SamplesArg = Annotated[
    list[str],
    typer.Argument(
        help="samples.jsonl files (from `tcopd eval`; training writes none), or sweep directories "
        "(one column per setting, its finished runs' samples pooled over seeds)."
    ),
]
RunsArg = Annotated[
    list[str],
    typer.Argument(
        help="Run directories written by `tcopd train`, or sweep directories (one column per "
        "run, named '<setting> seed<k>')."
    ),
]
NameOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--name",
        help="Column name per column, in order (repeatable; a sweep directory gives several; "
        "default: directory names).",
    ),
]
FormatOpt = Annotated[
    str | None,
    typer.Option(
        "--format", help="table, csv or json (default: from --output's suffix, else table)."
    ),
]
OutputOpt = Annotated[
    Path | None,
    typer.Option("--output", help="Write the table to this file instead of the terminal."),
]
TokenizerOpt = Annotated[
    str | None,
    typer.Option(
        "--tokenizer",
        help="Count tokens with this tokenizer (directory or Hub id), not num_tokens.",
    ),
]


def show(table: Table, fmt: str, output: Path | None) -> None:
    """Print ``table`` (rich for ``table``, raw text for csv/json) or write it to ``output``."""
    if output is not None:
        write_table(table, output, fmt)
        err_console.print(f"wrote {output}", highlight=False)
        return
    if fmt != "table":
        typer.echo(render(table, fmt), nl=False)
        return
    rt = RichTable(title=table.title, title_justify="left")
    rt.add_column(table.row_header)
    for c in table.columns:
        rt.add_column(c, justify="right")
    for r in table.rows:
        rt.add_row(r.label, *(format_value(v, r.fmt) for v in r.values))
    console.print(rt)
    for note in table.notes:
        console.print(note, style="dim", highlight=False)


def _with_progress(label: str, enabled: bool, fn):
    """Call ``fn(progress_callback)`` under a progress bar when ``enabled`` (re-tokenising is slow)."""
    if not enabled:
        return fn(None)
    with Progress(console=err_console, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(event: Event) -> None:
            bar.update(task, completed=event.done, total=event.total)

        return fn(update)


@analyze_app.command("length")
def length(
    samples: SamplesArg,
    name: NameOpt = None,
    tokenizer: TokenizerOpt = None,
    format: FormatOpt = None,
    output: OutputOpt = None,
) -> None:
    """Response length per samples file: mean/median/p90/max, by correctness, truncated, no \\boxed{} (Table 3)."""
    fmt = resolve_format(format, output)  # a bad --format fails before any work
    cfg = load_config(
        length_pipeline.LengthConfig,
        None,
        {"samples": samples, "names": name, "tokenizer": tokenizer},
    )
    result = _with_progress(
        "counting tokens", tokenizer is not None, lambda cb: length_pipeline.run(cfg, cb)
    )
    show(result.table, fmt, output)


@analyze_app.command("phrases")
def phrases(
    samples: SamplesArg,
    phrase: Annotated[
        list[str] | None, typer.Option("--phrase", help="Another phrase to count (repeatable).")
    ] = None,
    default_phrases: Annotated[
        bool,
        typer.Option(
            "--default-phrases/--no-default-phrases",
            help="Also count let's, we should, step 1, wait, define.",
        ),
    ] = True,
    name: NameOpt = None,
    tokenizer: TokenizerOpt = None,
    format: FormatOpt = None,
    output: OutputOpt = None,
) -> None:
    """Per-1,000-token rates of phrases per samples file (case-insensitive, whole words)."""
    fmt = resolve_format(format, output)
    overrides = {
        "samples": samples,
        "names": name,
        "phrases": phrase,
        "default_phrases": default_phrases,
        "tokenizer": tokenizer,
    }
    cfg = load_config(phrases_pipeline.PhrasesConfig, None, overrides)
    result = _with_progress(
        "counting tokens", tokenizer is not None, lambda cb: phrases_pipeline.run(cfg, cb)
    )
    show(result.table, fmt, output)


@analyze_app.command("curves")
def curves(
    runs: RunsArg,
    metric: Annotated[
        str, typer.Option("--metric", help="metrics.jsonl column to plot against step.")
    ] = "rollout_accuracy",
    out: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            "--out",
            help="PNG path; an SVG is written next to it (default <metric>.png). "
            "(alias: --out; --output is the table, as in every analyze command)",
        ),
    ] = None,
    smooth: Annotated[
        int, typer.Option("--smooth", help="Trailing moving-average window in points (1: none).")
    ] = 1,
    target: Annotated[
        float | None,
        typer.Option(
            "--target",
            help="Report the first step reaching this value (default: max reached by all).",
        ),
    ] = None,
    name: NameOpt = None,
    format: FormatOpt = None,
    output: OutputOpt = None,
) -> None:
    """Training curves of several runs on one plot (Figure 2), with the first step each reaches a target."""
    fmt = resolve_format(format, output)
    overrides = {
        "runs": runs,
        "names": name,
        "metric": metric,
        "out": str(out) if out is not None else None,
        "smooth": smooth,
        "target": target,
    }
    result = curves_pipeline.run(load_config(curves_pipeline.CurvesConfig, None, overrides))
    show(result.table, fmt, output)
    err_console.print(f"wrote {result.png} and {result.svg}", highlight=False)


@analyze_app.command("cost")
def cost(
    runs: RunsArg, name: NameOpt = None, format: FormatOpt = None, output: OutputOpt = None
) -> None:
    """Training cost per run: teachers, wall and device hours, phase shares, peak memory (Table 2)."""
    fmt = resolve_format(format, output)
    result = cost_pipeline.run(
        load_config(cost_pipeline.CostConfig, None, {"runs": runs, "names": name})
    )
    show(result.table, fmt, output)

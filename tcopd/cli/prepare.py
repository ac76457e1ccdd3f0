"""``tcopd prepare NAME``: datasets in verl's row format, and the toy world."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tcopd.cli.main import app
from tcopd.cli.options import ConfigOpt, SeedOpt, console, err_console
from tcopd.config import load_config
from tcopd.pipelines import prepare as pipeline
from tcopd.progress import Event


@app.command("prepare")
def prepare(
    name: Annotated[
        str, typer.Argument(help="deepmath, gopd-math, aime24, aime25, math500, file, toy.")
    ],
    path: Annotated[
        Path | None, typer.Argument(help="Input file for 'file' (jsonl/json/parquet/csv).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output directory (toy: default under the user cache)."),
    ] = None,
    from_path: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Local copy in the Hub's column layout (file or directory; aime24/aime25: "
            "a 'problem' or 'question' column); no download.",
        ),
    ] = None,
    out_name: Annotated[
        str | None, typer.Option("--name", help="Output file stem (default: the source name).")
    ] = None,
    min_difficulty: Annotated[
        float | None,
        typer.Option("--min-difficulty", help="deepmath: keep difficulty >= this (default 6)."),
    ] = None,
    question_field: Annotated[
        str | None,
        typer.Option("--question-field", help="file: question column (default question)."),
    ] = None,
    answer_field: Annotated[
        str | None, typer.Option("--answer-field", help="file: answer column (default answer).")
    ] = None,
    domain: Annotated[
        str | None, typer.Option("--domain", help="file: domain label of its rows (default math).")
    ] = None,
    instruction: Annotated[
        str | None,
        typer.Option(
            "--instruction", help="Sentence appended to each question (default: G-OPD's)."
        ),
    ] = None,
    template: Annotated[
        str | None,
        typer.Option("--template", help="Also store the rendered prompt: chat or plain."),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option("--tokenizer", help="Tokenizer with a chat template (for --template chat)."),
    ] = None,
    plain_format: Annotated[
        str | None,
        typer.Option(
            "--plain-format", help="Plain template, e.g. 'Question: {content}\\nAnswer:'."
        ),
    ] = None,
    seed: SeedOpt = None,
    force: Annotated[
        bool | None, typer.Option("--force/--no-force", help="toy: rebuild even if present.")
    ] = None,
    small: Annotated[
        bool | None, typer.Option("--small/--full", help="toy: the small, seconds-fast world.")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Write NAME as parquet + JSONL in verl's row format (or build the toy world)."""
    overrides = dict(
        source=name,
        path=str(path) if path else None,
        out=str(out) if out else None,
        from_path=str(from_path) if from_path else None,
        name=out_name,
        min_difficulty=min_difficulty,
        question_field=question_field,
        answer_field=answer_field,
        domain=domain,
        instruction=instruction,
        template=template,
        tokenizer=tokenizer,
        plain_format=plain_format,
        seed=seed,
        force=force,
        small=small,
    )
    cfg = load_config(pipeline.PrepareConfig, config, overrides)
    if cfg.source != "toy":  # a dataset loads in seconds; datasets shows its own download bars
        _render(pipeline.run(cfg))
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        tasks: dict[str, int] = {}

        def progress(event: Event) -> None:
            if event.phase not in tasks:
                tasks[event.phase] = bar.add_task(event.phase, total=event.total)
            bar.update(tasks[event.phase], completed=event.done, total=event.total)

        result = pipeline.run(cfg, progress=progress)
    _render(result)


def _render(result: pipeline.PrepareResult) -> None:
    for note in result.notes:
        console.print(note, highlight=False)
    if result.toy_table:
        console.print(_toy_table(result.toy_table))
    else:
        console.print(
            f"{result.rows} rows from {result.source} (read {result.read})", highlight=False
        )
    if result.example_prompt is not None:
        console.print("first prompt as the model sees it:", highlight=False)
        console.print(repr(result.example_prompt), highlight=False, markup=False)
    for f in result.files:
        console.print(f"wrote {f}" if not result.toy_reused else f"  {f}", highlight=False)


def _toy_table(t: dict) -> Table:
    table = Table(
        title=f"toy math test set: {t['problems']} problems, T={t['temperature']:g}, "
        f"max {t['max_new_tokens']} tokens (build {t.get('build_seconds', 0):.0f} s)"
    )
    table.add_column("model")
    table.add_column("accuracy (%)", justify="right")
    table.add_column("mean length (tokens)", justify="right")
    for name, r in t["models"].items():
        table.add_row(
            name,
            f"{100 * r['accuracy']:.1f} ± {100 * r['accuracy_se']:.1f}",
            f"{r['mean_length']:.1f} ± {r['mean_length_se']:.1f}",
        )
    return table

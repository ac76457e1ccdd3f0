"""``tcopd score``: per-token log-probs, reward and advantage of given rollouts (pipelines/score.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tcopd.cli.main import app
from tcopd.cli.options import (
    AntiExpertOpt,
    ConfigOpt,
    DeviceOpt,
    ExpertOpt,
    LambdasOpt,
    NormalizationOpt,
    ReferenceOpt,
    StudentOpt,
    TeacherOpt,
    console,
    err_console,
)
from tcopd.config import help_of, load_config
from tcopd.pipelines import score as pipeline
from tcopd.pipelines.score import ScoreConfig


def _opt(name: str, key: str):
    return typer.Option(name, help=help_of(ScoreConfig, key))


@app.command("score")
def score(
    student: StudentOpt = None,
    reference: ReferenceOpt = None,
    expert: ExpertOpt = None,
    anti_expert: AntiExpertOpt = None,
    lambdas: LambdasOpt = None,
    teacher: TeacherOpt = None,
    input: Annotated[Path | None, _opt("--input", "input")] = None,
    output: Annotated[Path | None, _opt("--output", "output")] = None,
    teacher_normalization: NormalizationOpt = None,
    beta: Annotated[float | None, _opt("--beta", "beta")] = None,
    temperature: Annotated[float | None, _opt("--temperature", "temperature")] = None,
    chunk_size: Annotated[int | None, _opt("--chunk-size", "chunk_size")] = None,
    token_budget: Annotated[int | None, _opt("--token-budget", "token_budget")] = None,
    device: DeviceOpt = None,
    dtype: Annotated[str | None, _opt("--dtype", "dtype")] = None,
    placement: Annotated[str | None, _opt("--placement", "placement")] = None,
    packing: Annotated[str | None, _opt("--packing", "packing")] = None,
    config: ConfigOpt = None,
) -> None:
    """Score rollouts under the student, the reference and every teacher; add reward and advantage."""
    overrides = {
        "student": student,
        "reference": reference,
        "expert": expert,
        "anti_expert": anti_expert,
        "lambdas": lambdas,
        "teachers": teacher or None,
        "input": str(input) if input else None,
        "output": str(output) if output else None,
        "teacher_normalization": teacher_normalization,
        "beta": beta,
        "temperature": temperature,
        "chunk_size": chunk_size,
        "token_budget": token_budget,
        "device": device,
        "dtype": dtype,
        "placement": placement,
        "packing": packing,
    }
    cfg = load_config(ScoreConfig, config, overrides)
    with Progress(
        TextColumn("scoring"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tokens"),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task("score", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        summary = pipeline.run(cfg, progress=progress)
    if summary.output is None:  # a non-zero rank under torchrun: rank 0 reports
        return
    _render(summary)


def _render(s: pipeline.ScoreSummary) -> None:
    table = Table(title="tcopd score", show_header=True, header_style="bold")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("rows", f"{s.rows:,}")
    table.add_row("response tokens", f"{s.tokens:,}")
    table.add_row("mean reward / token", f"{s.reward_mean:+.4f}")
    table.add_row("mean advantage / token", f"{s.advantage_mean:+.4f}")
    lam = {t.name: t.lam for t in s.teachers}
    for name, value in s.logratio_mean.items():
        table.add_row(f"mean log-ratio {name} (λ={lam[name]:g})", f"{value:+.4f}")
    table.add_row("models scored", ", ".join(s.model_names))
    table.add_row("tokens/s (all models)", f"{s.tokens_per_s:,.0f}")
    table.add_row("padding fraction", f"{s.padding_fraction:.1%}")
    for dev, gb in s.peak_mem_gb.items():
        table.add_row(f"peak memory {dev}", f"{gb:.2f} GB")
    table.add_row("wall time", f"{s.seconds:.1f} s")
    console.print(table)
    console.print(f"wrote {s.output} and {s.config_path}")

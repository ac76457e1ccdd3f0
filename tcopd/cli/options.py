"""Shared CLI options (``Annotated`` aliases) and consoles. Only cli/ imports typer and rich."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", help="YAML file of settings; flags given on the command line override it."
    ),
]
StudentOpt = Annotated[
    str | None, typer.Option("--student", help="Student model: local HF directory or Hub id.")
]
ReferenceOpt = Annotated[
    str | None,
    typer.Option(
        "--reference", help="Reference model π_ref (default: the student's initial weights)."
    ),
]
ExpertOpt = Annotated[
    str | None, typer.Option("--expert", help="Expert teacher (named 'expert'); λ from --lambdas.")
]
AntiExpertOpt = Annotated[
    str | None,
    typer.Option(
        "--anti-expert", help="Anti-expert teacher (named 'anti_expert'); λ from --lambdas."
    ),
]
LambdasOpt = Annotated[
    str | None,
    typer.Option(
        "--lambdas",
        help="Comma-separated λ for --expert, --anti-expert (and λ-less --teacher), e.g. 1.5,-0.5.",
    ),
]
TeacherOpt = Annotated[
    list[str] | None, typer.Option("--teacher", help="Extra teacher NAME=PATH:LAMBDA (repeatable).")
]
NormalizationOpt = Annotated[
    str | None,
    typer.Option(
        "--teacher-normalization", help="1/K over: active (λ≠0, default), all, or none (plain sum)."
    ),
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed (reaches the sampler).")]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="cpu, cuda, cuda:N (default: cuda if available).")
]

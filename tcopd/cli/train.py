"""``tcopd train``: flags → TrainConfig → pipelines.train.run, with a live progress display."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from tcopd.cli.lines import LineReporter
from tcopd.cli.main import app
from tcopd.cli.options import ConfigOpt, config_flags, console, yaml_only
from tcopd.errors import ConfigError
from tcopd.pipelines import train as pipeline
from tcopd.pipelines.train import TrainConfig
from tcopd.pipelines.train.config import recipes_for_help
from tcopd.progress import Event
from tcopd.runtime.training.distributed import env_world

_YAML_ONLY = ", ".join(yaml_only(TrainConfig))
FLAGS: dict[str, Any] = {"recipes": recipes_for_help()}  # also docs/train.md's table


@app.command(
    "train",
    epilog=f"Settings without a flag (set them in the --config YAML): {_YAML_ONLY}. "
    "Every setting as a table, with the recipes: docs/train.md#every-setting.",
)
@config_flags(TrainConfig, **FLAGS)
def train_cmd(
    flags: dict[str, Any],
    config: ConfigOpt = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="Continue the run in this directory from its last checkpoint.",
            show_default=False,
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a run already in --out.")
    ] = False,
) -> None:
    """TC-OPD training on DeepSpeed: rollouts → teacher scores → PPO updates.

    [b]Examples[/b]: [cyan]tcopd train --toy --lambdas 1.5,-0.5 --out runs/tc[/cyan];
    [cyan]tcopd train --student S --expert E --anti-expert A --lambdas 1.5,-0.5 --data d.parquet --out runs/x[/cyan];
    [cyan]tcopd train --recipe paper --student S --expert E --anti-expert A --lambdas 1.5,-0.5 ...[/cyan]
    """

    out = flags.get("out")
    if resume is not None:
        if out is not None and Path(out) != resume:
            raise ConfigError(f"--resume {resume} and --out {out} differ: give only --resume")
        if config is not None:
            raise ConfigError("--resume takes the run's own config.yaml; drop --config")
        cfg = pipeline.load_resume_config(resume, flags)
    else:
        cfg = pipeline.load_train_config(str(config) if config else None, flags)
    with _Display(cfg.steps) as display:
        result = pipeline.run(cfg, resume=resume is not None, overwrite=overwrite, progress=display)
    if env_world()[0] != 0:
        return  # the summary once, from rank 0
    m = result.last_metrics
    table = Table(title=f"tcopd train — {result.run_dir}")
    table.add_column("metric")
    table.add_column("last step", justify="right")
    for key in (
        "step",
        "reward_mean",
        "rollout_accuracy",
        "eval_mean_at_n",
        "response_len_mean",
        "time_step_s",
    ):
        if m.get(key) is not None:
            table.add_row(key, f"{m[key]:.4g}" if isinstance(m[key], float) else str(m[key]))
    console.print(table)
    console.print(f"metrics: {result.run_dir / 'metrics.jsonl'}")
    if result.final_model:
        kind = "adapter (PEFT format)" if cfg.lora else "model (HF format)"
        console.print(f"final {kind}: {result.final_model}")


class _Display:
    """Live progress: step, phase, reward, accuracy, ETA (plain lines when output is piped)."""

    def __init__(self, steps: int):
        self.lines = None if console.is_terminal else LineReporter(console, "train")
        self.progress = Progress(
            TextColumn("[bold]train[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[phase]}"),
            TextColumn("reward {task.fields[reward]}  acc {task.fields[acc]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.steps = steps

    def __enter__(self) -> _Display:
        if self.lines is not None:
            return self
        self.progress.__enter__()
        self.task = self.progress.add_task(
            "train", total=self.steps, phase="starting", reward="-", acc="-"
        )
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.lines is None:
            self.progress.__exit__(*exc)

    def __call__(self, event: Event) -> None:
        if self.lines is not None:
            self.lines(event)
            return
        step = event.step
        if event.metrics is not None:
            m = event.metrics
            self.progress.update(
                self.task,
                completed=m["step"],
                reward=f"{m['reward_mean']:+.3f}",
                acc="-" if m["rollout_accuracy"] is None else f"{m['rollout_accuracy']:.2f}",
            )
        if event.phase:
            label = event.phase if step is None else f"{event.phase} (step {step + 1})"
            if step is not None and event.metrics is None:
                self.progress.update(self.task, completed=step)
            self.progress.update(self.task, phase=label)

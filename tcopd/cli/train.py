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

from tcopd.cli.main import app
from tcopd.cli.options import (
    AntiExpertOpt,
    ConfigOpt,
    DeviceOpt,
    ExpertOpt,
    LambdasOpt,
    NormalizationOpt,
    ReferenceOpt,
    SeedOpt,
    StudentOpt,
    TeacherOpt,
    console,
)
from tcopd.errors import ConfigError


def _opt(flag: str, help: str) -> Any:
    return typer.Option(flag, help=help, show_default=False)


@app.command("train")
def train_cmd(
    student: StudentOpt = None,
    reference: ReferenceOpt = None,
    expert: ExpertOpt = None,
    anti_expert: AntiExpertOpt = None,
    lambdas: LambdasOpt = None,
    teacher: TeacherOpt = None,
    teacher_normalization: NormalizationOpt = None,
    data: Annotated[
        str | None, _opt("--data", "Training prompts (prepared parquet/jsonl).")
    ] = None,
    eval_data: Annotated[
        str | None, _opt("--eval-data", "Held-out prompts for periodic eval.")
    ] = None,
    out: Annotated[Path | None, _opt("--out", "Run directory.")] = None,
    config: ConfigOpt = None,
    toy: Annotated[
        bool, typer.Option("--toy", help="Use the toy world's models and data (no paths needed).")
    ] = False,
    resume: Annotated[
        Path | None,
        _opt("--resume", "Continue the run in this directory from its last checkpoint."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a run already in --out.")
    ] = False,
    steps: Annotated[int | None, _opt("--steps", "Training steps (paper: 50).")] = None,
    batch_size: Annotated[
        int | None, _opt("--batch-size", "Prompts per step (paper: 128).")
    ] = None,
    samples_per_prompt: Annotated[
        int | None, _opt("--samples-per-prompt", "Rollouts per prompt.")
    ] = None,
    max_response_tokens: Annotated[
        int | None, _opt("--max-response-tokens", "Max new tokens per rollout.")
    ] = None,
    lr: Annotated[float | None, _opt("--lr", "Learning rate.")] = None,
    ppo_epochs: Annotated[int | None, _opt("--ppo-epochs", "Passes over each batch.")] = None,
    mini_batches: Annotated[int | None, _opt("--mini-batches", "Optimizer steps per pass.")] = None,
    clip_eps: Annotated[float | None, _opt("--clip-eps", "PPO clip ε.")] = None,
    beta: Annotated[float | None, _opt("--beta", "KL coefficient β.")] = None,
    truncated_is: Annotated[
        bool | None,
        typer.Option(
            "--truncated-is/--no-truncated-is", help="Truncated IS weights.", show_default=False
        ),
    ] = None,
    outcome_weight: Annotated[
        float | None, _opt("--outcome-weight", "Outcome-reward weight w.")
    ] = None,
    eval_every: Annotated[int | None, _opt("--eval-every", "Evaluate every N steps.")] = None,
    eval_n: Annotated[int | None, _opt("--eval-n", "Samples per eval prompt.")] = None,
    save_every: Annotated[int | None, _opt("--save-every", "Checkpoint every N steps.")] = None,
    seed: SeedOpt = None,
    engine: Annotated[str | None, _opt("--engine", "Rollout engine: hf or vllm.")] = None,
    zero_stage: Annotated[
        int | None, _opt("--zero-stage", "DeepSpeed ZeRO stage (default 2).")
    ] = None,
    gradient_checkpointing: Annotated[
        bool | None,
        typer.Option(
            "--gradient-checkpointing/--no-gradient-checkpointing",
            show_default=False,
            help="Recompute activations.",
        ),
    ] = None,
    teacher_placement: Annotated[
        str | None, _opt("--teacher-placement", "local, offload or shard.")
    ] = None,
    template: Annotated[str | None, _opt("--template", "Prompt template: chat or plain.")] = None,
    device: DeviceOpt = None,
    tensorboard: Annotated[
        bool | None,
        typer.Option(
            "--tensorboard/--no-tensorboard", show_default=False, help="TensorBoard logging."
        ),
    ] = None,
) -> None:
    """TC-OPD training on DeepSpeed: rollouts → teacher scores → PPO updates.

    [b]Examples[/b]: [cyan]tcopd train --toy --lambdas 1.5,-0.5 --out runs/tc[/cyan];
    [cyan]tcopd train --student S --expert E --anti-expert A --lambdas 1.5,-0.5 --data d.parquet --out runs/x[/cyan]
    """
    from tcopd.pipelines import train as pipeline
    from tcopd.pipelines.train_config import load_train_config

    flags = {
        "student": student,
        "reference": reference,
        "expert": expert,
        "anti_expert": anti_expert,
        "lambdas": lambdas,
        "teacher": teacher or None,
        "teacher_normalization": teacher_normalization,
        "data": data,
        "eval_data": eval_data,
        "out": str(out) if out else None,
        "toy": toy or None,
        "steps": steps,
        "batch_size": batch_size,
        "samples_per_prompt": samples_per_prompt,
        "max_response_tokens": max_response_tokens,
        "lr": lr,
        "ppo_epochs": ppo_epochs,
        "mini_batches": mini_batches,
        "clip_eps": clip_eps,
        "beta": beta,
        "truncated_is": truncated_is,
        "outcome_weight": outcome_weight,
        "eval_every": eval_every,
        "eval_n": eval_n,
        "save_every": save_every,
        "seed": seed,
        "engine": engine,
        "zero_stage": zero_stage,
        "gradient_checkpointing": gradient_checkpointing,
        "teacher_placement": teacher_placement,
        "template": template,
        "device": device,
        "tensorboard": tensorboard,
    }
    if resume is not None:
        if out is not None and Path(out) != resume:
            raise ConfigError(f"--resume {resume} and --out {out} differ: give only --resume")
        if config is not None:
            raise ConfigError("--resume takes the run's own config.yaml; drop --config")
        cfg = pipeline.load_resume_config(resume, flags)
    else:
        cfg = load_train_config(str(config) if config else None, flags)
    with _Display(cfg.steps) as display:
        result = pipeline.run(cfg, resume=resume is not None, overwrite=overwrite, progress=display)
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
        console.print(f"final model (HF format): {result.final_model}")


class _Display:
    """Live progress: step, phase, reward, accuracy, ETA."""

    def __init__(self, steps: int):
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
        self.progress.__enter__()
        self.task = self.progress.add_task(
            "train", total=self.steps, phase="starting", reward="-", acc="-"
        )
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, event: dict[str, Any]) -> None:
        step = event.get("step")
        if "metrics" in event:
            m = event["metrics"]
            self.progress.update(
                self.task,
                completed=m["step"],
                reward=f"{m['reward_mean']:+.3f}",
                acc=f"{m['rollout_accuracy']:.2f}",
            )
        if event.get("phase"):
            label = event["phase"] if step is None else f"{event['phase']} (step {step + 1})"
            if step is not None and "metrics" not in event:
                self.progress.update(self.task, completed=step)
            self.progress.update(self.task, phase=label)

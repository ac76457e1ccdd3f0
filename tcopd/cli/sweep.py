"""``tcopd sweep``: flags → SweepConfig → pipelines.sweep.run, a progress bar over the grid, a table.

The flags are the sweep's own (SweepConfig) plus every ``tcopd train`` setting as a base setting
of all runs (TrainConfig), generated from both dataclasses. The train settings that the sweep
sets itself are left out (``--out``, ``--seed``: ``--seeds``; ``--lambdas`` is a grid axis) and
train's periodic evaluation flags are renamed ``--train-eval-*``, since ``--eval-*`` configure
the sweep's final evaluation.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
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
from tcopd.cli.options import ConfigOpt, config_flags, console, err_console
from tcopd.config import field_defaults
from tcopd.errors import ConfigError, TrainingError
from tcopd.pipelines import sweep as pipeline
from tcopd.pipelines.sweep import SweepConfig, SweepResult
from tcopd.pipelines.train import TrainConfig
from tcopd.pipelines.train.config import recipes_for_help
from tcopd.progress import Event

TRAIN_SKIP = ("out", "seed", "lambdas")  # set by the sweep
TRAIN_RENAMED = {f"eval_{k}": f"train_eval_{k}" for k in ("data", "n", "every", "prompts")}
SWEEP_PANEL, TRAIN_PANEL = "Sweep", "Train settings (every run)"


def _flag_fields() -> type:
    """One dataclass with the sweep's fields and the train fields (renamed where they clash)."""
    fields = []
    for cls, skip, rename in ((SweepConfig, (), {}), (TrainConfig, TRAIN_SKIP, TRAIN_RENAMED)):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in skip:
                meta = dataclasses.field(default=None, metadata=f.metadata)
                fields.append((rename.get(f.name, f.name), hints[f.name], meta))
    return dataclasses.make_dataclass("SweepFlags", fields)


def _defaults() -> dict[str, Any]:
    """The flags' defaults: the sweep's own, and each run's (train's) under the flag's name."""
    train = {TRAIN_RENAMED.get(k, k): v for k, v in field_defaults(TrainConfig).items()}
    return {
        **{k: v for k, v in train.items() if k not in TRAIN_SKIP},
        **field_defaults(SweepConfig),
    }


_SWEEP_NAMES = {f.name for f in dataclasses.fields(SweepConfig)}
_TRAIN_NAMES = {
    TRAIN_RENAMED.get(f.name, f.name): f.name
    for f in dataclasses.fields(TrainConfig)
    if f.name not in TRAIN_SKIP
}


def _panels(command: Any) -> Any:
    """Group ``--help`` into the sweep's flags and the train settings (the generated flags only:
    ``--config``'s option object is shared with the other commands)."""
    for p in command.__signature__.parameters.values():
        info = typing.get_args(p.annotation)[1] if typing.get_args(p.annotation) else None
        if isinstance(info, typer.models.OptionInfo) and p.name in _SWEEP_NAMES | set(_TRAIN_NAMES):
            info.rich_help_panel = TRAIN_PANEL if p.name in _TRAIN_NAMES else SWEEP_PANEL
    return command


_EPILOG = (
    "YAML (--config): the sweep's keys at the top (lambdas, seeds, grid: {setting: "
    "\\[values]} or named settings: {name: {setting: value}}, eval_benchmark, eval_n, "
    "eval_options: {...}, baseline, ...) and the base train "
    "settings under train:. Outputs, statistics and resume: docs/sweep.md."
)
SWEEP_FLAGS: dict[str, Any] = {"flag_names": {"eval_benchmark": "--eval"}}  # docs/sweep.md's table


@app.command(
    "sweep",
    epilog=_EPILOG,
)
@_panels
@config_flags(
    _flag_fields(),
    **SWEEP_FLAGS,
    defaults=_defaults(),
    recipes={
        r: {TRAIN_RENAMED.get(k, k): v for k, v in values.items()}
        for r, values in recipes_for_help().items()
    },
)
def sweep_cmd(
    flags: dict[str, Any],
    config: ConfigOpt = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="Continue the sweep in this directory with its saved settings.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Train every setting of a grid with every seed, evaluate each final model, compare them.

    [b]Example[/b]: [cyan]tcopd sweep --toy --lambdas 1 --lambdas 1.5 --lambdas 1.5,-0.5
    --seeds 0,1,2 --eval toy --eval-n 4 --out runs/sweep[/cyan]. Re-running a sweep (or
    [cyan]--resume DIR[/cyan]) skips what is finished and resumes what was interrupted.
    """
    sweep_flags = {k: v for k, v in flags.items() if k in _SWEEP_NAMES}
    train_flags = {_TRAIN_NAMES[k]: v for k, v in flags.items() if k in _TRAIN_NAMES}
    if resume is not None:
        out = sweep_flags.pop("out")
        if out is not None and Path(out) != resume:
            raise ConfigError(f"--resume {resume} and --out {out} differ: give only --resume")
        if config is not None:
            raise ConfigError("--resume takes the sweep's own settings; drop --config")
        cfg = pipeline.load_resume_config(resume, sweep_flags, train_flags)
    else:
        cfg = pipeline.load_sweep_config(str(config) if config else None, sweep_flags, train_flags)
    with _Display() as display:
        result = pipeline.run(cfg, progress=display)
    _render(result)
    failed = result.report["failed"]
    if failed:  # the report is written; the exit code still says that the sweep is incomplete
        raise TrainingError(
            f"{len(failed)} of {len(result.report['runs'])} runs failed (listed above and in "
            f"{result.out / 'sweep.json'}); re-run the sweep to retry them"
        )


class _Display:
    """Runs done / total with the ETA, and what each device is doing (plain lines when stderr is
    piped: one per finished run and per run phase)."""

    def __init__(self) -> None:
        self.lines = None if err_console.is_terminal else LineReporter(err_console, "sweep")
        self.progress = Progress(
            TextColumn("[bold]sweep[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("runs"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[activity]}"),
            console=err_console,
            transient=False,
        )
        self.active: dict[str, str] = {}  # run label → what it is doing

    def __enter__(self) -> _Display:
        if self.lines is None:
            self.progress.__enter__()
            self.task = self.progress.add_task("sweep", total=None, activity="checking settings")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.lines is None:
            self.progress.__exit__(*exc)

    def _activity(self, text: str | None = None) -> None:
        text = text if text is not None else "; ".join(self.active.values())
        self.progress.update(self.task, activity=text)

    def __call__(self, event: Event) -> None:
        if self.lines is not None:
            if event.phase == "warning":
                err_console.print(f"warning: {event.detail}", soft_wrap=True, markup=False)
            elif event.phase in ("sweep", "run"):  # a run's steps: one line per tenth
                self.lines(event)
            return
        if event.phase == "sweep":
            self.progress.update(self.task, completed=event.done, total=event.total)
            label = event.detail.rsplit(": ", 1)[0]
            self.active.pop(label, None)
            self._activity()
        elif event.phase == "run":
            label, what = event.detail.rsplit(": ", 1)
            steps = f" {event.done}/{event.total}" if event.total else ""
            self.active[label] = f"{label}: {what}{steps}"
            self._activity()
        elif event.phase == "warning":
            err_console.print(f"[yellow]warning:[/yellow] {event.detail}", soft_wrap=True)
        elif event.phase == "checking settings" and event.total:
            self._activity(f"checking settings {event.done + 1}/{event.total}")
        else:
            self._activity(event.phase)


def _ci(block: dict[str, Any], k: int, sign: str = "") -> str:
    value = block.get("mean", block.get("diff"))
    if value is None:
        return "—"
    low, high = block["ci"]
    if low is None:
        return f"{value:{sign}.{k}f}"
    return f"{value:{sign}.{k}f} [{low:{sign}.{k}f}, {high:{sign}.{k}f}]"


def _render(result: SweepResult) -> None:
    r = result.report
    n = r["eval"].get("n", 32)
    table = Table(title=f"tcopd sweep — {r['benchmark']}, mean over seeds [95% CI]")
    for col in (
        "setting",
        "seeds",
        f"mean@{n} %",
        "Δ vs baseline",
        "mean tokens",
        "AUC",
        "steps to target",
    ):
        table.add_column(col, justify="left" if col == "setting" else "right")
    for name, block in r["per_setting"].items():
        diff = r["differences"].get(name)
        delta = "baseline" if diff is None else _ci(diff["mean_at_n"] or {}, 2, "+")
        table.add_row(
            name,
            str(len(block["seeds"])),
            _ci(block["mean_at_n"], 2),
            delta,
            _ci(block["mean_tokens"], 1),
            _ci(block["auc"], 3),
            _ci(block["steps_to_target"], 1),
        )
    console.print(table)
    target = r["target"]["value"]
    if target is not None:
        console.print(f"target rollout accuracy {target:.3f} ({r['target']['source']})")
    for line in r["claims"]:
        console.print(line, highlight=False, soft_wrap=True, markup=False)  # "A [math] > B [math]"
    for f in r["failed"]:
        console.print(
            f"[red]failed[/red]: {escape(str(f['setting']))} seed {f['seed']}: {escape(str(f['error']))}",
            soft_wrap=True,
        )
    for f in result.files:
        console.print(f"wrote {f}")

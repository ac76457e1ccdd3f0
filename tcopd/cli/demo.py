"""``tcopd demo``: the toy-world experiment end to end, with a progress display and the tables."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from tcopd.cli.analyze import show
from tcopd.cli.lines import LineReporter
from tcopd.cli.main import app
from tcopd.cli.options import console
from tcopd.errors import TrainingError
from tcopd.progress import Event


@app.command("demo")
def demo_cmd(
    out: Annotated[str, typer.Option("--out", help="Output directory.")] = "runs/demo",
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps", help="Training steps per method (default: toy preset).", show_default=False
        ),
    ] = None,
    eval_n: Annotated[int, typer.Option("--eval-n", help="Samples per test problem.")] = 1,
    eval_limit: Annotated[
        int | None,
        typer.Option("--eval-limit", help="First N test problems only.", show_default=False),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of everything.")] = 0,
    seeds: Annotated[
        int,
        typer.Option(
            "--seeds",
            help="Training seeds per method (--seed, --seed+1, ...); above 1 the trainings run "
            "as a tcopd sweep in OUT/sweep and Table 1 gives 95% intervals over seeds.",
        ),
    ] = 1,
    small: Annotated[
        bool, typer.Option("--small", help="Seconds-long version on the small toy world.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Delete --out first and redo everything.")
    ] = False,
    toy_dir: Annotated[
        str | None,
        typer.Option(
            "--toy-dir", help="Toy world directory (default: user cache).", show_default=False
        ),
    ] = None,
    multitask: Annotated[
        bool,
        typer.Option(
            "--multitask",
            help="One seed of the multi-task study instead: six settings on the multi-task toy "
            "world, a per-domain table (--out default runs/demo-multitask; --eval-n default 2).",
        ),
    ] = False,
) -> None:
    """Evaluate student/expert/anti-expert, train OPD, G-OPD and two TC-OPD runs, print Tables 1-3.

    With [cyan]--seeds N[/cyan] (N > 1) every method trains with N seeds through [cyan]tcopd
    sweep[/cyan] and Table 1 shows the mean over seeds with its 95% interval.
    """
    if multitask:
        _multitask(out, seed, eval_n, steps, force)
        return
    from tcopd.pipelines import demo

    cfg = demo.DemoConfig(
        out=out,
        steps=steps,
        eval_n=eval_n,
        eval_limit=eval_limit,
        seed=seed,
        seeds=seeds,
        small=small,
        force=force,
        toy_dir=toy_dir,
    )
    with _bar() as on_event:
        result = demo.run(cfg, on_event)
    for t in (result.table1, result.table2, result.table3):
        show(t, "table", None)
    for note in result.notes:
        console.print(f"• {note}")
    console.print(f"\nFigure 2 analogue: {result.figure}")
    console.print(f"Report: {result.report}   (tables as CSV/JSON beside it)")
    if result.intervals:
        console.print(f"Sweep (every run, sweep.json): {result.out / 'sweep'}")
    console.print(f"Wall time: {result.wall_s / 60:.1f} min")
    if result.failed:  # everything is written; the exit code still says that runs are missing
        raise TrainingError(
            f"{len(result.failed)} training run(s) failed (listed above and in "
            f"{result.out / 'sweep' / 'sweep.json'}); re-run the demo to retry them"
        )


@contextmanager
def _bar() -> Iterator[Callable[[Event], None]]:
    """A spinner line showing the latest progress event (plain lines when output is piped)."""
    if not console.is_terminal:
        yield LineReporter(console, "demo")
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]demo[/bold] {task.description}"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("starting", total=None)

        def on_event(event: Event) -> None:
            parts = [event.phase, event.detail]
            if event.step is not None:
                parts.append(f"step {event.step + 1}")
            if event.done is not None and event.total is not None:
                parts.append(f"{event.done}/{event.total}")
            bar.update(task, description=" · ".join(p for p in parts if p))

        yield on_event


def _multitask(out: str, seed: int, eval_n: int, steps: int | None, force: bool) -> None:
    from tcopd.pipelines import demo_multitask as mt

    cfg = mt.MultitaskDemoConfig(
        out="runs/demo-multitask" if out == "runs/demo" else out,
        seed=seed,
        eval_n=2 if eval_n == 1 else eval_n,
        steps=steps,
        force=force,
    )
    with _bar() as on_event:
        result = mt.run(cfg, on_event)
    table = Table(title="multi-task toy study, one seed: mean@n (%) / mean length per domain")
    table.add_column("setting")
    for col in ("math", "math len", "math interf.", "code", "code len", "code interf."):
        table.add_column(col, justify="right")

    def f(v: float | None, sign: bool = False) -> str:
        return "—" if v is None else (f"{v:+.1f}" if sign else f"{v:.1f}")

    for r in result.rows:
        table.add_row(
            r["setting"],
            *(
                f(r[f"{d}_{k}"], k == "interference")
                for d in ("math", "code")
                for k in ("mean_at_n", "tokens", "interference")
            ),
        )
    console.print(table)
    console.print("interference = single-task reference − setting; one seed: no interval")
    console.print(
        f"Report: {result.report}   Sweep: {result.out / 'sweep'}  ({result.wall_s:.0f} s)"
    )

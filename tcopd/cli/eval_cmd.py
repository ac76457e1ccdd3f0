"""``tcopd eval``: sample, grade, and report mean@n / pass@k (one model or a comparison)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tcopd.cli.main import app
from tcopd.cli.options import ConfigOpt, config_flags, console, err_console
from tcopd.config import help_of, load_config
from tcopd.pipelines.eval import EvalConfig, EvalResult, ModelRun, run
from tcopd.progress import Event

FLAGS: dict[str, Any] = {  # also docs/eval.md's table
    "skip": ("benchmark",),  # the positional argument
    "flag_names": {  # train's names; the older ones stay as aliases
        "models": "--model",
        "grade_timeout_s": ("--grade-timeout-s", "--grade-timeout"),
        "token_budget": ("--rollout-token-budget", "--token-budget"),
    },
}


@app.command(
    "eval",
    epilog="Every flag is also a key of the --config YAML: its name with _ for - (--top-p: top_p), "
    "except --model (models, a list); the argument is "
    "benchmark. Outputs, resume and re-grading: docs/eval.md.",
)
@config_flags(EvalConfig, **FLAGS)
def eval_command(
    flags: dict[str, Any],
    benchmark: Annotated[
        str | None,
        typer.Argument(help=help_of(EvalConfig, "benchmark"), show_default=False),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Sample n responses per problem, grade them (last \\boxed{}, math-verify), report mean@n ± stderr and pass@k.

    [b]Examples[/b]: [cyan]tcopd eval aime24 --model M --n 32[/cyan];
    [cyan]tcopd eval --data d.parquet --model A --model B[/cyan];
    [cyan]tcopd eval --from-samples runs/eval-aime24/samples.jsonl --out runs/regraded[/cyan]
    """
    for path_flag in ("data", "out", "from_samples"):  # as typed Paths used to: ./a/ → a
        if flags[path_flag] is not None:
            flags[path_flag] = str(Path(flags[path_flag]))
    cfg = load_config(EvalConfig, config, {**flags, "benchmark": benchmark})
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    ) as bar:
        state: dict[str, Any] = {"task": None}

        def progress(event: Event) -> None:
            if event.phase == "eval":  # a model starts (done: samples kept from an earlier run)
                state["task"] = bar.add_task(
                    f"{event.detail} samples", total=event.total, completed=event.done, rate=""
                )
            elif event.phase == "warning":
                err_console.print(f"[yellow]warning:[/yellow] {event.detail}")
            elif event.phase == "graded":
                bar.update(state["task"], completed=event.done)
            elif event.phase == "generated" and event.detail:
                bar.update(state["task"], rate=event.detail)

        result = run(cfg, progress)
    _render(result)


def _label(run: ModelRun) -> str:
    """A run's name in the table: the model's directory name; a re-graded run names its file."""
    src = run.summary.get("regraded_from")
    model = run.summary.get("model")
    if src is None:
        return Path(str(run.model)).name
    return f"{Path(str(model)).name} ({src})" if model else str(src)


def _render(result: EvalResult) -> None:
    first = result.runs[0].summary
    # n varies across problems only for files graded elsewhere (--from-samples)
    n = first["n"] if first["n"] is not None else "n"
    k = list(first["pass_at_k"])[-1]
    n_range = "" if first["n"] is not None else f" (n = {first['n_min']}–{first['n_max']})"
    title = f"{first.get('benchmark')}: mean@{n}{n_range} and pass@{k} in %, ± standard error over {first['problems']} problems"
    table = Table(title=title)
    table.add_column("model", overflow="fold")
    for col in (f"mean@{n}", f"pass@{k}", "mean tokens", "truncated", "ungraded"):
        table.add_column(col, justify="right")
    for r in result.runs:
        s = r.summary
        table.add_row(
            _label(r),
            f"{s['mean_at_n']:.2f} ± {s['stderr']:.2f}",
            f"{list(s['pass_at_k'].values())[-1]:.1f}",
            f"{s['mean_tokens']:.0f}",
            f"{100 * s['truncated_fraction']:.1f}%",
            str(s["ungraded"]),
        )
    console.print(table)
    _render_domains(result)
    for r in result.runs:
        pass_k = "  ".join(f"@{k} {v:.1f}" for k, v in r.summary["pass_at_k"].items())
        console.print(f"{_label(r)} pass@k: {pass_k}")
        console.print(f"wrote {r.out_dir / 'samples.jsonl'} and {r.out_dir / 'summary.json'}")
        if r.summary.get("skipped_too_long"):
            console.print(
                f"[yellow]{r.summary['skipped_too_long']} problem(s) skipped: prompt longer than the context"
            )
        if r.summary.get("ungraded"):
            console.print(
                f"[yellow]{r.summary['ungraded']} sample(s) ungraded (grader timed out or crashed)"
            )
    if result.comparison_path:
        console.print(f"wrote {result.comparison_path}")


def _render_domains(result: EvalResult) -> None:
    """Per-domain mean@n and length, when the benchmark has several domains."""
    if not any(r.summary.get("domains") for r in result.runs):
        return
    table = Table(title="per domain: mean@n in % ± standard error, mean tokens")
    table.add_column("model", overflow="fold")
    table.add_column("domain")
    for col in ("problems", "mean@n", "mean tokens"):
        table.add_column(col, justify="right")
    for r in result.runs:
        for d, s in r.summary.get("domains", {}).items():
            table.add_row(
                _label(r),
                d,
                str(s["problems"]),
                f"{s['mean_at_n']:.2f} ± {s['stderr']:.2f}",
                f"{s['mean_tokens']:.0f}",
            )
    console.print(table)

"""``tcopd score``: per-token log-probs, reward and advantage of given rollouts (pipelines/score.py)."""

from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tcopd.cli.main import app
from tcopd.cli.options import ConfigOpt, config_flags, console, err_console
from tcopd.config import load_config
from tcopd.pipelines import score as pipeline
from tcopd.pipelines.score import ScoreConfig
from tcopd.progress import Event

FLAGS: dict[str, Any] = {  # also docs/score.md's table
    "flag_names": {
        "teachers": "--teacher",
        "placement": ("--teacher-placement", "--placement"),  # train's names; the old ones stay
        "token_budget": ("--score-token-budget", "--token-budget"),
    }
}


@app.command(
    "score",
    epilog="Set lambda_table (per-domain λ) and served_teachers ([{name, url, lam}]) in the "
    "--config YAML. Teachers on vLLM servers: docs/serving.md.",
)
@config_flags(ScoreConfig, **FLAGS)
def score(flags: dict[str, Any], config: ConfigOpt = None) -> None:
    """Score rollouts under the student, the reference and every teacher; add reward and advantage."""
    cfg = load_config(ScoreConfig, config, flags)
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

        def progress(event: Event) -> None:
            bar.update(task, completed=event.done, total=event.total)

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
    for name, (mx, mean) in s.compare.items():
        table.add_row(f"{name} served vs local: max |Δ|", f"{mx:.2e}")
        table.add_row(f"{name} served vs local: mean |Δ|", f"{mean:.2e}")
    console.print(table)
    console.print(f"wrote {s.output} and {s.config_path}")

"""``tcopd eval``: sample, grade, and report mean@n / pass@k (one model or a comparison)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tcopd.cli.main import app
from tcopd.cli.options import ConfigOpt, DeviceOpt, SeedOpt, console, err_console
from tcopd.config import load_config
from tcopd.pipelines.eval import BENCHMARKS, EvalConfig, EvalResult, ModelRun, run


@app.command("eval")
def eval_command(
    benchmark: Annotated[
        str | None, typer.Argument(help=f"Benchmark: {', '.join(BENCHMARKS)} (or use --data FILE).")
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="Model directory or Hub id (repeat to compare models)."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Prepared-format data file instead of a benchmark."),
    ] = None,
    n: Annotated[int | None, typer.Option("--n", help="Samples per problem (default 32).")] = None,
    temperature: Annotated[
        float | None,
        typer.Option("--temperature", help="Sampling temperature (default 1.0; 0 = greedy)."),
    ] = None,
    top_p: Annotated[
        float | None, typer.Option("--top-p", help="Nucleus mass (default 1.0 = off).")
    ] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Top-k (default 0 = off).")] = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", help="Max new tokens (default 16384).")
    ] = None,
    engine: Annotated[str | None, typer.Option("--engine", help="hf (default) or vllm.")] = None,
    seed: SeedOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output directory (default runs/eval-<benchmark>).")
    ] = None,
    template: Annotated[
        str | None, typer.Option("--template", help="Prompt template: auto (default), chat, plain.")
    ] = None,
    tokenizer: Annotated[
        str | None, typer.Option("--tokenizer", help="Tokenizer path (default: the model's).")
    ] = None,
    device: DeviceOpt = None,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="float32 (default), bfloat16, float16.")
    ] = None,
    token_budget: Annotated[
        int | None, typer.Option("--token-budget", help="HF engine: tokens per generate call.")
    ] = None,
    grader_workers: Annotated[
        int | None, typer.Option("--grader-workers", help="Grading processes (default 2).")
    ] = None,
    grade_timeout: Annotated[
        float | None,
        typer.Option("--grade-timeout", help="Seconds per graded sample (default 10)."),
    ] = None,
    too_long: Annotated[
        str | None,
        typer.Option("--too-long", help="Prompt longer than the context: skip (default) or fail."),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N problems.")] = None,
    from_samples: Annotated[
        Path | None,
        typer.Option("--from-samples", help="Re-grade this samples.jsonl (no model needed)."),
    ] = None,
    gpu_memory_utilization: Annotated[
        float | None,
        typer.Option("--gpu-memory-utilization", help="vLLM: GPU memory fraction (default 0.85)."),
    ] = None,
    tensor_parallel_size: Annotated[
        int | None, typer.Option("--tensor-parallel-size", help="vLLM: TP size.")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Sample n responses per problem, grade them (last \\boxed{}, math-verify), report mean@n ± stderr and pass@k."""
    overrides: dict[str, Any] = {
        "benchmark": benchmark,
        "models": list(model) if model else None,
        "data": str(data) if data else None,
        "n": n,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "max_tokens": max_tokens,
        "engine": engine,
        "seed": seed,
        "out": str(out) if out else None,
        "template": template,
        "tokenizer": tokenizer,
        "device": device,
        "dtype": dtype,
        "token_budget": token_budget,
        "grader_workers": grader_workers,
        "grade_timeout_s": grade_timeout,
        "too_long": too_long,
        "limit": limit,
        "from_samples": str(from_samples) if from_samples else None,
        "gpu_memory_utilization": gpu_memory_utilization,
        "tensor_parallel_size": tensor_parallel_size,
    }
    cfg = load_config(EvalConfig, config, overrides)
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

        def progress(ev: dict[str, Any]) -> None:
            if ev["event"] == "start":
                name = Path(str(ev["model"])).name if ev["model"] else "re-grade"
                state["task"] = bar.add_task(
                    f"{name} samples", total=ev["total"], completed=ev["done"], rate=""
                )
                if ev.get("skipped"):
                    err_console.print(
                        f"[yellow]warning:[/yellow] skipped {ev['skipped']} problem(s) whose prompt exceeds the model's context"
                    )
            elif ev["event"] == "warning":
                err_console.print(f"[yellow]warning:[/yellow] {ev['message']}")
            elif ev["event"] == "graded":
                bar.update(state["task"], completed=ev["done"])
            elif ev["event"] == "generated" and ev["seconds"] > 0:
                bar.update(state["task"], rate=f"{ev['tokens'] / ev['seconds']:.0f} tok/s")

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

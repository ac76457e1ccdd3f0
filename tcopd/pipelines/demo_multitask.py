"""``tcopd demo --multitask``: one seed of the multi-task study (docs/results.md, issue 17).

Steps: build (or reuse) the multi-task toy world; train six settings through ``tcopd sweep`` in
``OUT/sweep`` (resumable), each evaluated on the mixed math + code test set; print and write the
per-domain table.

The settings (the same as ``examples/sweep_toy_multitask.yaml``, which runs them with 3 seeds):

- multi-task, on mixed math + code prompts (40 steps × 32, the toy recipe), a λ table over the
  math and the code teacher: routed OPD (Λ = I), routed G-OPD (diagonal 1.5), TC-OPD with
  off-diagonal −0.5 and −1.5;
- single-task references: math prompts with the math teacher, code prompts with the code teacher
  (OPD, 40 steps × 16 prompts: as many prompts and updates of that domain as a mixed run).

Interference on a domain = the single-task reference's mean@n there − the multi-task setting's.
With one seed there is no interval: the table says so; the study (3 seeds) has them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcopd.pipelines import sweep
from tcopd.progress import Progress, report
from tcopd.runtime.data import io
from tcopd.runtime.toy import ensure_toy_multitask

MULTI = ("routed-opd", "routed-g-opd", "tc-opd-0.5", "tc-opd-1.5")
SINGLE = {"math": "math-only", "code": "code-only"}
DOMAINS = ("math", "code")


@dataclass(frozen=True)
class MultitaskDemoConfig:
    out: str = "runs/demo-multitask"
    seed: int = 0
    eval_n: int = 2
    steps: int | None = None  # None: the toy recipe's 40
    force: bool = False


@dataclass
class MultitaskDemoResult:
    out: Path
    rows: list[dict[str, Any]]  # one per setting: mean@n and length per domain, interference
    report: Path
    wall_s: float


def settings(world: Any) -> dict[str, dict[str, Any]]:
    """The six named settings of the study, with this world's paths."""

    def table(diag: float, off: float) -> dict[str, dict[str, float]]:
        rows = {"math": {"math": diag}, "code": {"code": diag}}
        if off:
            rows["math"]["code"] = rows["code"]["math"] = off
        return rows

    return {
        "routed-opd": {"lambda_table": table(1.0, 0.0)},
        "routed-g-opd": {"lambda_table": table(1.5, 0.0)},
        "tc-opd-0.5": {"lambda_table": table(1.5, -0.5)},
        "tc-opd-1.5": {"lambda_table": table(1.5, -1.5)},
        "math-only": {
            "data": str(world.train_files["math"]),
            "batch_size": 16,
            "teacher": [f"math={world.math_teacher}:1"],
        },
        "code-only": {
            "data": str(world.train_files["code"]),
            "batch_size": 16,
            "teacher": [f"code={world.code_teacher}:1"],
        },
    }


def sweep_config(cfg: MultitaskDemoConfig, world: Any, seeds: list[int]) -> sweep.SweepConfig:
    train: dict[str, Any] = {
        "toy": True,
        "student": str(world.student),
        "data": str(world.train_files["mixed"]),
        "teacher": [f"math={world.math_teacher}", f"code={world.code_teacher}"],
    }
    if cfg.steps is not None:
        train["steps"] = cfg.steps
    return sweep.SweepConfig(
        out=str(Path(cfg.out) / "sweep"),
        settings=settings(world),
        baseline="routed-g-opd",
        seeds=seeds,
        train=train,
        eval_benchmark="toy-multitask",
        eval_data=str(world.root),
        eval_n=cfg.eval_n,
        eval_seed=cfg.seed,
    )


def per_domain_rows(report_json: dict[str, Any]) -> list[dict[str, Any]]:
    """Per setting: mean@n and mean length per domain (means over seeds), and for the
    multi-task settings the interference (single-task reference − setting) per domain."""
    per = report_json["per_setting"]

    def mean(name: str, d: str, stat: str) -> float | None:
        return per[name].get("domains", {}).get(d, {}).get(stat, {}).get("mean")

    rows = []
    for name in per:
        row: dict[str, Any] = {"setting": name}
        for d in DOMAINS:
            row[f"{d}_mean_at_n"] = mean(name, d, "mean_at_n")
            row[f"{d}_tokens"] = mean(name, d, "mean_tokens")
            single = mean(SINGLE[d], d, "mean_at_n")
            mine = row[f"{d}_mean_at_n"]
            row[f"{d}_interference"] = (
                single - mine if name in MULTI and single is not None and mine is not None else None
            )
        rows.append(row)
    return rows


def _markdown(rows: list[dict[str, Any]], seeds: int) -> str:
    def f(v: float | None, sign: bool = False) -> str:
        return "—" if v is None else (f"{v:+.1f}" if sign else f"{v:.1f}")

    lines = [
        f"# Multi-task toy study, {seeds} seed(s)",
        "",
        "mean@n (%) and mean length (tokens) per domain on the mixed test set; interference =",
        "single-task reference − setting (points; positive: the mixed run is worse).",
        "",
        "| setting | math mean@n | math len | math interference | code mean@n | code len | code interference |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {f(r['math_mean_at_n'])} | {f(r['math_tokens'])} | "
            f"{f(r['math_interference'], True)} | {f(r['code_mean_at_n'])} | "
            f"{f(r['code_tokens'])} | {f(r['code_interference'], True)} |"
        )
    if seeds == 1:
        lines += ["", "One seed: no interval, no ordering claimed (the study has 3 seeds)."]
    return "\n".join(lines) + "\n"


def run(cfg: MultitaskDemoConfig, progress: Progress | None = None) -> MultitaskDemoResult:
    import time

    t0 = time.perf_counter()
    out = Path(cfg.out)
    if cfg.force and out.exists():
        shutil.rmtree(out)
    report(progress, "multi-task toy world (installed on first use)")
    world = ensure_toy_multitask(progress=progress)
    result = sweep.run(sweep_config(cfg, world, [cfg.seed]), progress)
    rows = per_domain_rows(result.report)
    path = io.atomic_write_text(out / "demo_multitask.md", _markdown(rows, 1))
    io.write_json(out / "demo_multitask.json", {"rows": rows, "sweep": str(out / "sweep")})
    return MultitaskDemoResult(out, rows, path, time.perf_counter() - t0)

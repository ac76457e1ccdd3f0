"""``tcopd demo``: the paper's experiment, end to end, on the toy world (what ``make demo`` runs).

1. build the toy world if absent (student, math expert, code anti-expert; `tcopd prepare toy`);
2. evaluate student, expert and anti-expert on the toy math test set;
3. train OPD (λ = 1), G-OPD (λ = 1.5), TC-OPD (1.5, −0.5) and TC-OPD (1.5, −1.5) from the student
   with the same seed, data and settings (the toy preset of `tcopd train --toy`);
4. evaluate every distilled student the same way;
5. write the Table 1 (accuracy ± standard error), Table 2 (cost), Table 3 (response length)
   analogues and the Figure 2 analogue (rollout accuracy per step, PNG + SVG), and a
   ``report.md`` that gathers them.

Numbers are whatever they are; each accuracy carries its standard error, and the report says
which differences the noise cannot separate. Everything lands under ``--out`` (default
``runs/demo``); re-running reuses finished evaluations and trainings (delete the folder, or pass
``--force``, to start over).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

from tcopd.config import field, to_dict, write_resolved
from tcopd.pipelines import eval as eval_pipeline
from tcopd.pipelines import train as train_pipeline
from tcopd.pipelines.analyze import Row, Table, cost, curves, length, render, write_table
from tcopd.progress import Event, Progress
from tcopd.runtime.io import atomic_write_text, write_json
from tcopd.runtime.toy import ensure_toy

# (run name, λ of the expert, λ of the anti-expert or None): the paper's Table 1 rows.
METHODS: tuple[tuple[str, float, float | None], ...] = (
    ("OPD", 1.0, None),
    ("G-OPD", 1.5, None),
    ("TC-OPD(1.5,-0.5)", 1.5, -0.5),
    ("TC-OPD(1.5,-1.5)", 1.5, -1.5),
)


@dataclass(frozen=True)
class DemoConfig:
    out: str = field("runs/demo", help="Where every run, evaluation, table and plot is written.")
    steps: int | None = field(None, help="Training steps per method (default: the toy preset's).")
    eval_n: int = field(1, help="Samples per toy-math test problem in each evaluation.")
    eval_limit: int | None = field(
        None, help="Evaluate on the first N test problems (default: all)."
    )
    seed: int = field(0, help="Seed of the toy world, the training runs and the evaluations.")
    small: bool = field(False, help="A seconds-long demo on the small toy world (for tests).")
    force: bool = field(False, help="Delete --out first and redo everything.")
    toy_dir: str | None = field(None, help="Toy world directory (default: the user cache).")


@dataclass
class DemoResult:
    out: Path
    table1: Table
    table2: Table
    table3: Table
    figure: Path
    report: Path
    accuracy: dict[str, tuple[float, float]]  # name → (mean@n %, stderr %)
    wall_s: float
    notes: list[str] = dc_field(default_factory=list)


def _train_flags(
    cfg: DemoConfig, world: Any, lam_e: float, lam_a: float | None, out: Path
) -> dict[str, Any]:
    flags: dict[str, Any] = {
        "toy": True,
        "student": str(world.student),
        "expert": str(world.expert),
        "anti_expert": str(world.anti_expert) if lam_a is not None else None,
        "lambdas": f"{lam_e},{lam_a}" if lam_a is not None else f"{lam_e}",
        "data": str(world.train_files["math"]),
        "out": str(out),
        "seed": cfg.seed,
        "steps": cfg.steps,
    }
    if cfg.small:
        flags.update(batch_size=4, samples_per_prompt=2, max_response_tokens=24, save_every=0)
        flags["steps"] = cfg.steps or 2
    return flags


def _evaluate(
    cfg: DemoConfig, model: Path, out: Path, world: Any, name: str, progress: Progress
) -> dict[str, Any]:
    progress(Event("eval", detail=name))
    if (out / "summary.json").is_file():
        return json.loads((out / "summary.json").read_text())
    config = eval_pipeline.EvalConfig(
        data=str(world.test_files["math"]),
        models=[str(model)],
        out=str(out),
        n=cfg.eval_n,
        max_tokens=24 if cfg.small else 96,
        seed=cfg.seed,
        template="plain",
        limit=cfg.eval_limit,
    )
    return eval_pipeline.run(config, progress).runs[0].summary


def run(cfg: DemoConfig, progress: Progress | None = None) -> DemoResult:
    """See the module docstring."""

    progress = progress or (lambda event: None)
    t0 = time.perf_counter()
    out = Path(cfg.out)
    if cfg.force and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_resolved(cfg, out / "demo_config.yaml")
    progress(Event("toy world", detail="building (first run only)"))
    world = ensure_toy(root=cfg.toy_dir, seed=cfg.seed, size="small" if cfg.small else "full")
    summaries: dict[str, dict[str, Any]] = {}
    for name, model in (
        ("student", world.student),
        ("expert", world.expert),
        ("anti-expert", world.anti_expert),
    ):
        summaries[name] = _evaluate(cfg, model, out / "eval" / name, world, name, progress)
    run_dirs: dict[str, Path] = {}
    for name, lam_e, lam_a in METHODS:
        run_dirs[name] = out / "train" / name
        final = _train(cfg, world, lam_e, lam_a, run_dirs[name], name, progress)
        summaries[name] = _evaluate(cfg, final, out / "eval" / name, world, name, progress)
    progress(Event("tables", detail="Tables 1-3, Figure 2"))
    acc = {n: (float(s["mean_at_n"]), float(s["stderr"])) for n, s in summaries.items()}
    tables, fig = _tables(cfg, out, summaries, acc, run_dirs)
    notes = _notes(acc)
    wall = time.perf_counter() - t0
    report = out / "report.md"
    atomic_write_text(report, _report(cfg, *tables, fig.png, fig.summary, notes, wall))
    write_json(
        out / "demo_summary.json",
        {"accuracy": acc, "wall_s": wall, "config": to_dict(cfg), "notes": notes},
    )
    return DemoResult(out, *tables, fig.png, report, acc, wall, notes)


def _train(
    cfg: DemoConfig,
    world: Any,
    lam_e: float,
    lam_a: float | None,
    run_dir: Path,
    name: str,
    progress: Progress,
) -> Path:
    """Train one method (unless its run finished before); returns its final HF model directory."""

    done = run_dir / "checkpoints" / "latest"
    if not done.is_file():
        progress(Event("train", detail=name))
        tcfg = train_pipeline.load_train_config(
            None, _train_flags(cfg, world, lam_e, lam_a, run_dir)
        )
        train_pipeline.run(
            tcfg, overwrite=True, progress=lambda e: progress(dataclasses.replace(e, detail=name))
        )
    return run_dir / "checkpoints" / done.read_text().strip() / "model"


def _tables(
    cfg: DemoConfig,
    out: Path,
    summaries: dict[str, dict[str, Any]],
    acc: dict[str, tuple[float, float]],
    run_dirs: dict[str, Path],
) -> tuple[tuple[Table, Table, Table], Any]:
    """Tables 1-3 (written as CSV and JSON) and the Figure 2 analogue."""

    names = list(summaries)
    table1 = Table(
        title=f"Table 1 (toy): toy-math mean@{cfg.eval_n} (%), ± standard error",
        columns=tuple(names),
        rows=(
            Row("mean@n %", tuple(acc[n][0] for n in names), ".1f"),
            Row("± stderr", tuple(acc[n][1] for n in names), ".1f"),
            Row("Δ vs student", tuple(acc[n][0] - acc["student"][0] for n in names), "+.1f"),
            Row("problems", tuple(summaries[n].get("problems") for n in names), "d"),
        ),
        row_header="model",
    )
    runs, methods = [str(run_dirs[n]) for n in run_dirs], list(run_dirs)
    table2 = cost.run(cost.CostConfig(runs=runs, names=methods)).table
    samples = [str(out / "eval" / n / "samples.jsonl") for n in names]
    table3 = length.run(length.LengthConfig(samples=samples, names=names)).table
    fig = curves.run(
        curves.CurvesConfig(
            runs=runs,
            names=methods,
            metric="rollout_accuracy",
            out=str(out / "figure2_rollout_accuracy.png"),
            smooth=3,
        )
    )
    for t, stem in (
        (table1, "table1_accuracy"),
        (table2, "table2_cost"),
        (table3, "table3_length"),
    ):
        write_table(t, out / f"{stem}.csv", "csv")
        write_table(t, out / f"{stem}.json", "json")
    return (table1, table2, table3), fig


def _notes(acc: dict[str, tuple[float, float]]) -> list[str]:
    """Plain-language reading of Table 1 that respects the noise (2 standard errors)."""
    base, base_se = acc["student"]
    notes = []
    for name, _, _ in METHODS:
        m, se = acc[name]
        gap = 2 * (se**2 + base_se**2) ** 0.5
        verdict = "beats" if m - base > gap else "does not clearly beat"
        notes.append(
            f"{name} {verdict} the student ({m:.1f} vs {base:.1f}, 2·SE of the difference = {gap:.1f})."
        )
    distilled = [n for n, _, _ in METHODS]
    best = max(distilled, key=lambda n: acc[n][0])
    close = [
        n
        for n in distilled
        if n != best and acc[best][0] - acc[n][0] <= 2 * (acc[best][1] ** 2 + acc[n][1] ** 2) ** 0.5
    ]
    if close:
        notes.append(
            f"Best distilled: {best}; within noise of it: {', '.join(close)} — no ordering claimed among them."
        )
    else:
        notes.append(f"Best distilled: {best}, ahead of the others by more than 2 standard errors.")
    return notes


def _report(
    cfg: DemoConfig,
    t1: Table,
    t2: Table,
    t3: Table,
    png: Path,
    curve_lines: list[str],
    notes: list[str],
    wall: float,
) -> str:
    parts = [
        "# tcopd demo — the paper's experiment on the toy world",
        "",
        f"Wall time: {wall / 60:.1f} min. Settings: `{cfg.out}/demo_config.yaml`.",
        "",
        "```",
        render(t1, "table"),
        "```",
        "",
        *[f"- {n}" for n in notes],
        "",
        "```",
        render(t2, "table"),
        "```",
        "",
        "```",
        render(t3, "table"),
        "```",
        "",
        f"Figure 2 analogue (rollout accuracy per step): `{png.name}`",
        "",
        *[f"- {line}" for line in curve_lines],
        "",
    ]
    return "\n".join(parts)

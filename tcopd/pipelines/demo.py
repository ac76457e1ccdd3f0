"""``tcopd demo``: the paper's experiment, end to end, on the toy world (what ``make demo`` runs).

1. install the shipped toy world if absent (student, math expert, code anti-expert; `tcopd
   prepare toy`): the same world whatever ``--seed`` is;
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

With ``seeds = N > 1``, steps 3-4 are a ``tcopd sweep`` in ``OUT/sweep`` (the four λ settings ×
seeds ``seed … seed+N−1``; each run trained and evaluated in subprocesses, resumable): Table 1
gives each method's mean@n over seeds with its 95 % t interval, the reading of it is the sweep's
claim lines (paired differences against OPD, "A > B" only when the interval excludes 0), Table 2
each method's first finished run, Table 3 each method's samples pooled over seeds, and Figure 2
the sweep's curves (mean over seeds ± 1 standard error). OPD and G-OPD run with the anti-expert
at λ = 0 there (``1,0`` and ``1.5,0``: every setting shares the sweep's teachers; a λ = 0 teacher
is never loaded or scored, so the objective is OPD's and G-OPD's).
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
from tcopd.errors import ConfigError, TrainingError
from tcopd.pipelines import eval as eval_pipeline
from tcopd.pipelines import sweep
from tcopd.pipelines import train as train_pipeline
from tcopd.pipelines.analyze import Row, Table, cost, curves, length, render, write_table
from tcopd.progress import Event, Progress
from tcopd.runtime.data.io import atomic_write_text, write_json
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
    seed: int = field(0, help="Seed of the training runs and evaluations (the world is fixed).")
    seeds: int = field(
        1, help="Training seeds per method (seed, seed+1, ...); more than 1 runs a tcopd sweep."
    )
    small: bool = field(False, help="A seconds-long demo on the small toy world (for tests).")
    force: bool = field(False, help="Delete --out first and redo everything.")
    toy_dir: str | None = field(None, help="Toy world directory (default: the user cache).")

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ConfigError(f"--seeds must be at least 1, got {self.seeds}")


@dataclass
class DemoResult:
    out: Path
    table1: Table
    table2: Table
    table3: Table
    figure: Path
    report: Path
    accuracy: dict[str, tuple[float | None, float | None]]  # name → (mean@n %, stderr %)
    wall_s: float
    notes: list[str] = dc_field(default_factory=list)
    # with --seeds N > 1: method → 95 % t interval of its mean over seeds; failed runs
    intervals: dict[str, tuple[float | None, float | None]] = dc_field(default_factory=dict)
    failed: list[str] = dc_field(default_factory=list)


def _eval_max_tokens(cfg: DemoConfig) -> int:
    return 24 if cfg.small else 96


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
        max_tokens=_eval_max_tokens(cfg),
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
    progress(Event("toy world", detail="installing the shipped world (first run only)"))
    # The world is the shipped one whatever --seed says: the seed varies training and sampling,
    # not the instrument (the small test world is built, seed 0).
    world = ensure_toy(root=cfg.toy_dir, size="small" if cfg.small else "full")
    summaries: dict[str, dict[str, Any]] = {}
    for name, model in (
        ("student", world.student),
        ("expert", world.expert),
        ("anti-expert", world.anti_expert),
    ):
        summaries[name] = _evaluate(cfg, model, out / "eval" / name, world, name, progress)
    if cfg.seeds > 1:
        return _run_seeds(cfg, world, out, summaries, progress, t0)
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
    # Ordering the methods needs intervals over training seeds: a standard error over problems
    # covers only the evaluation's noise, and on the shipped world one method's mean@4 moves by
    # about 5 points (standard deviation) from one training seed to the next (docs/results.md).
    means = [acc[n][0] for n, _, _ in METHODS]
    notes.append(
        f"One seed orders none of the distilled methods (here {min(means):.1f}–{max(means):.1f} %): "
        "a method's accuracy moves by about 5 points between training seeds on this world "
        "(docs/results.md); `--seeds N` gives intervals over seeds."
    )
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
    figure: str = "rollout accuracy per step",
    header: tuple[str, ...] = (),
) -> str:
    parts = [
        "# tcopd demo — the paper's experiment on the toy world",
        "",
        f"Wall time: {wall / 60:.1f} min. Settings: `{cfg.out}/demo_config.yaml`.",
        "",
        *header,
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
        f"Figure 2 analogue ({figure}): `{png.name}`",
        "",
        *[f"- {line}" for line in curve_lines],
        "",
    ]
    return "\n".join(parts)


# ------------------------------------------------------------------ --seeds N: through the sweep


def _sweep_config(cfg: DemoConfig, world: Any, out: Path) -> sweep.SweepConfig:
    """The four methods × the seeds, with the toy world's paths, the toy recipe and the demo's
    evaluation; the anti-expert is every run's teacher (λ = 0 for OPD and G-OPD)."""
    base = _train_flags(cfg, world, 1.5, -0.5, out)
    for key in ("out", "seed", "lambdas"):  # set by the sweep
        base.pop(key)
    return sweep.SweepConfig(
        out=str(out / "sweep"),
        lambdas=[f"{lam_e:g},{lam_a or 0:g}" for _, lam_e, lam_a in METHODS],
        seeds=[cfg.seed + i for i in range(cfg.seeds)],
        train={k: v for k, v in base.items() if v is not None},
        eval_data=str(world.test_files["math"]),
        eval_n=cfg.eval_n,
        eval_max_tokens=_eval_max_tokens(cfg),
        eval_limit=cfg.eval_limit,
        eval_seed=cfg.seed,
        eval_options={"template": "plain"},
        smooth=3,  # as the one-seed Figure 2
    )


def _ci_text(block: dict[str, Any], digits: int) -> str:
    """``mean [low, high]`` of a sweep statistic (the mean alone for one seed; — for none)."""
    if block["mean"] is None:
        return "—"
    low, high = block["ci"]
    text = f"{block['mean']:.{digits}f}"
    return text if low is None else f"{text} [{low:.{digits}f}, {high:.{digits}f}]"


def _run_seeds(
    cfg: DemoConfig,
    world: Any,
    out: Path,
    summaries: dict[str, dict[str, Any]],
    progress: Progress,
    t0: float,
) -> DemoResult:
    """Steps 3-5 with ``cfg.seeds`` seeds per method, through ``tcopd sweep`` (module docstring)."""
    scfg = _sweep_config(cfg, world, out)
    report = sweep.run(scfg, progress).report
    method_of = dict(zip(report["settings"], (n for n, _, _ in METHODS), strict=True))
    failed = [
        f"{method_of[f['setting']]} seed {f['seed']} failed: {f['error']}" for f in report["failed"]
    ]
    first: dict[str, Path] = {}  # each method's first finished run (Table 2)
    for r, status in sweep.load_runs(scfg.out):
        if status == "done":
            first.setdefault(method_of[r.setting.name], r.train_dir)
    if not first:
        raise TrainingError(f"every training of the demo failed: {failed[0] if failed else ''}")
    progress(Event("tables", detail="Tables 1-3, Figure 2"))
    per_method = {method_of[s]: block for s, block in report["per_setting"].items()}
    t1, t2, t3 = _tables_seeds(cfg, out, summaries, report, method_of, first, scfg)
    png = out / "figure2_rollout_accuracy.png"
    for suffix in (".png", ".svg"):  # the sweep's curves: mean over seeds ± 1 standard error
        if (Path(scfg.out) / f"curves{suffix}").is_file():
            shutil.copyfile(Path(scfg.out) / f"curves{suffix}", png.with_suffix(suffix))
    notes = [_rename(line, method_of) for line in report["claims"]] + failed
    acc = {n: (float(summaries[n]["mean_at_n"]), float(summaries[n]["stderr"])) for n in summaries}
    acc |= {m: (b["mean_at_n"]["mean"], None) for m, b in per_method.items()}
    intervals = {m: tuple(b["mean_at_n"]["ci"]) for m, b in per_method.items()}
    header = (
        f"Seeds {', '.join(map(str, scfg.seed_list))} per method; every training and its "
        f"evaluation in `{scfg.out}` (sweep.json, settings.csv, differences.csv, runs.csv; "
        "docs/sweep.md). " + "; ".join(f"{m} = `{s}`" for s, m in method_of.items()) + ".",
        "",
    )
    wall = time.perf_counter() - t0
    curve_lines = _curve_lines(per_method, report)
    figure = "rollout accuracy per step, mean over seeds ± 1 standard error"
    text = _report(cfg, t1, t2, t3, png, curve_lines, notes, wall, figure, header)
    atomic_write_text(out / "report.md", text)
    summary = {"accuracy": acc, "intervals": intervals, "seeds": scfg.seed_list}
    summary |= {"sweep": str(Path(scfg.out) / "sweep.json"), "failed": failed, "wall_s": wall}
    write_json(out / "demo_summary.json", summary | {"config": to_dict(cfg), "notes": notes})
    return DemoResult(out, t1, t2, t3, png, out / "report.md", acc, wall, notes, intervals, failed)


def _tables_seeds(
    cfg: DemoConfig,
    out: Path,
    summaries: dict[str, dict[str, Any]],
    report: dict[str, Any],
    method_of: dict[str, str],
    first: dict[str, Path],
    scfg: Any,
) -> tuple[Table, Table, Table]:
    """Tables 1-3 of a several-seed demo (written as CSV and JSON)."""
    per_method = {method_of[s]: block for s, block in report["per_setting"].items()}
    problems = {
        method_of[r["setting"]]: r["problems"] for r in report["runs"] if r["status"] == "done"
    }
    t1 = _table1_seeds(cfg, summaries, per_method, problems, len(scfg.seed_list))
    first = {m: first[m] for m in method_of.values() if m in first}
    t2 = cost.run(cost.CostConfig(runs=[str(d) for d in first.values()], names=list(first))).table
    note = f"each method's first finished seed; every run: tcopd analyze cost {scfg.out}"
    t2 = dataclasses.replace(t2, notes=(*t2.notes, note))
    models = list(summaries)
    samples = [str(out / "eval" / n / "samples.jsonl") for n in models]
    names = [*models, *method_of.values()]
    t3 = length.run(length.LengthConfig(samples=[*samples, scfg.out], names=names)).table
    t3 = dataclasses.replace(t3, notes=(*t3.notes, "methods: the samples of every seed pooled"))
    for t, stem in ((t1, "table1_accuracy"), (t2, "table2_cost"), (t3, "table3_length")):
        write_table(t, out / f"{stem}.csv", "csv")
        write_table(t, out / f"{stem}.json", "json")
    return t1, t2, t3


def _table1_seeds(
    cfg: DemoConfig,
    summaries: dict[str, dict[str, Any]],
    per_method: dict[str, dict[str, Any]],
    problems: dict[str, int],
    seeds: int,
) -> Table:
    """Table 1: the three models' single evaluations (± standard error over problems) and each
    method's mean@n over seeds with its 95 % t interval."""
    cols = {
        n: {"mean": float(s["mean_at_n"]), "se": s["stderr"], "problems": s.get("problems")}
        for n, s in summaries.items()
    }
    for m, b in per_method.items():
        mean, ci = b["mean_at_n"]["mean"], b["mean_at_n"]["ci"]
        cols[m] = {"mean": mean, "low": ci[0], "high": ci[1], "seeds": len(b["seeds"])}
        cols[m]["problems"] = problems.get(m)
    student = cols["student"]["mean"]

    def row(label: str, key: str, fmt: str) -> Row:
        return Row(label, tuple(c.get(key) for c in cols.values()), fmt)

    delta = tuple(None if c["mean"] is None else c["mean"] - student for c in cols.values())
    return Table(
        title=f"Table 1 (toy): toy-math mean@{cfg.eval_n} (%); methods: mean over {seeds} seeds",
        columns=tuple(cols),
        rows=(
            row("mean@n %", "mean", ".1f"),
            row("± stderr", "se", ".1f"),
            row("95% CI low", "low", ".1f"),
            row("95% CI high", "high", ".1f"),
            row("seeds", "seeds", "d"),
            Row("Δ vs student", delta, "+.1f"),
            row("problems", "problems", "d"),
        ),
        row_header="model",
        notes=(
            "student, expert, anti-expert: one evaluation, ± standard error over problems; "
            "methods: mean over seeds, 95% t interval over seeds (docs/sweep.md)",
        ),
    )


def _rename(line: str, method_of: dict[str, str]) -> str:
    """A sweep line with each setting's name (``lambdas=1.5,-0.5``) replaced by its method's."""
    for setting in sorted(method_of, key=len, reverse=True):
        line = line.replace(setting, method_of[setting])
    return line


def _curve_lines(per_method: dict[str, dict[str, Any]], report: dict[str, Any]) -> list[str]:
    """Figure 2's summary: each method's AUC, final rollout accuracy and steps to the target."""
    target = report["target"]
    lines = []
    if target["value"] is not None:
        lines.append(f"target rollout accuracy {target['value']:.3f} ({target['source']})")
    for m, b in per_method.items():
        lines.append(
            f"{m}: AUC {_ci_text(b['auc'], 3)}, final rollout accuracy "
            f"{_ci_text(b['final_rollout_accuracy'], 3)}, steps to target "
            f"{_ci_text(b['steps_to_target'], 1)} (mean over seeds [95% CI])"
        )
    return lines

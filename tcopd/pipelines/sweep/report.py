"""A sweep's statistics and tables: ``sweep.json``, CSV tables and claim lines (figures:
``figures.py``, re-exported here as ``write_figures``).

Inputs of a finished run: ``eval/samples.jsonl`` (each problem's fraction correct a[s, p], the
response lengths) and ``train/metrics.jsonl`` (``rollout_accuracy`` per step). The formulas
(docs/sweep.md) are in ``tcopd.runtime.evaluation.stats``:

- per setting, over its finished seeds: mean@n (%), mean response length (tokens), the AUC of
  the rollout-accuracy curve, the final rollout accuracy (trailing mean over ``smooth`` steps)
  and the steps to reach the target, each as mean with a t interval and the per-seed values;
- per setting against the baseline: mean@n paired by seed and problem (bootstrap over seeds ×
  problems, sign agreement over seeds); AUC and steps-to-target paired by seed (t interval);
- a claim line per difference: "A > B" only when the interval excludes 0.

Failed and unfinished runs are listed and left out; a pair uses the seeds both settings
finished and the problems both evaluated.
"""

from __future__ import annotations

import csv
import io as stdio
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcopd.pipelines.sweep.config import Setting, SweepConfig
from tcopd.pipelines.sweep.figures import write_figures as write_figures
from tcopd.pipelines.sweep.runner import Run
from tcopd.runtime.data import io
from tcopd.runtime.evaluation import stats

STATISTICS = ("mean_at_n", "mean_tokens", "auc", "final_rollout_accuracy", "steps_to_target")


@dataclass
class RunResult:
    """What one run contributes: per-problem accuracy, lengths, its rollout-accuracy curve."""

    setting: str
    seed: int
    status: str
    error: str | None = None
    train_wall_s: float | None = None
    eval_wall_s: float | None = None
    accuracy: dict[str, float] = field(default_factory=dict)  # problem_id → fraction correct
    mean_tokens: float | None = None
    steps: list[int] = field(default_factory=list)
    curve: list[float] = field(default_factory=list)  # rollout_accuracy per step
    domain_of: dict[str, str] = field(default_factory=dict)  # problem_id → domain (when given)
    domain_tokens: dict[str, float] = field(default_factory=dict)  # domain → mean tokens

    @property
    def done(self) -> bool:
        return self.status == "done"

    @property
    def mean_at_n(self) -> float | None:
        return 100.0 * sum(self.accuracy.values()) / len(self.accuracy) if self.accuracy else None


def _curve(train_dir: Path) -> tuple[list[int], list[float]]:
    """(steps, rollout accuracy) from metrics.jsonl; a step logged twice keeps its last row."""
    by_step: dict[int, float] = {}
    for _, row in io.iter_jsonl(train_dir / "metrics.jsonl"):
        v = row.get("rollout_accuracy")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            by_step[int(row["step"])] = float(v)
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def load_result(run: Run, state: dict[str, Any]) -> RunResult:
    res = RunResult(
        run.setting.name,
        run.seed,
        state.get("status", "pending"),
        state.get("error"),
        state.get("train_wall_s"),
        state.get("eval_wall_s"),
    )
    if not res.done:
        return res
    res.steps, res.curve = _curve(run.train_dir)
    correct: dict[str, list[bool]] = {}
    tokens: list[int] = []
    by_domain: dict[str, list[int]] = {}
    for _, row in io.iter_jsonl(run.eval_dir / "samples.jsonl"):
        correct.setdefault(str(row["problem_id"]), []).append(row.get("correct") is True)
        tokens.append(int(row.get("num_tokens") or 0))
        if row.get("domain") is not None:
            res.domain_of[str(row["problem_id"])] = str(row["domain"])
            by_domain.setdefault(str(row["domain"]), []).append(tokens[-1])
    res.accuracy = {p: sum(v) / len(v) for p, v in correct.items()}
    res.mean_tokens = sum(tokens) / len(tokens) if tokens else None
    if len(by_domain) > 1:
        res.domain_tokens = {d: sum(v) / len(v) for d, v in by_domain.items()}
    else:
        res.domain_of = {}
    return res


def in_domain(res: RunResult, domain: str) -> RunResult:
    """The run restricted to one domain's problems (mean@n and tokens of that domain)."""
    keep = {p: a for p, a in res.accuracy.items() if res.domain_of.get(p) == domain}
    return RunResult(
        res.setting,
        res.seed,
        res.status,
        accuracy=keep,
        mean_tokens=res.domain_tokens.get(domain),
        steps=res.steps,
        curve=res.curve,
    )


def domains_of(results: list[RunResult]) -> list[str]:
    """The evaluation's domains, when its problems carry several (else none)."""
    return sorted({d for r in results if r.done for d in r.domain_of.values()})


# ------------------------------------------------------------------------------ statistics


def _seed_values(res: RunResult, target: float | None, smooth: int) -> dict[str, float | None]:
    """One run's value of each statistic (None: not defined, e.g. no graded rollouts)."""
    has_curve = bool(res.curve)
    reach = (
        stats.steps_to_target(res.steps, res.curve, target, smooth)
        if has_curve and target is not None
        else None
    )
    return {
        "mean_at_n": res.mean_at_n,
        "mean_tokens": res.mean_tokens,
        "auc": stats.curve_auc(res.curve) if has_curve else None,
        "final_rollout_accuracy": stats.trailing_mean(res.curve, smooth)[-1] if has_curve else None,
        "steps_to_target": None if reach is None else float(reach),
    }


def _summary(per_seed: dict[int, float | None]) -> dict[str, Any]:
    """Mean and t interval over the seeds with a value, plus every seed's value."""
    values = [v for v in per_seed.values() if v is not None]
    return {
        **stats.t_interval(values).to_dict(),
        "per_seed": {str(s): v for s, v in per_seed.items()},
    }


def _paired_t(a: dict[int, float | None], b: dict[int, float | None]) -> dict[str, Any]:
    """A − B per seed where both are defined, with a t interval over those seeds."""
    per_seed = {s: a[s] - b[s] for s in a if s in b and a[s] is not None and b[s] is not None}
    iv = stats.t_interval(list(per_seed.values()))
    return {
        "diff": iv.mean,
        "ci": [iv.low, iv.high],
        "n": iv.n,
        "per_seed": {str(s): v for s, v in per_seed.items()},
    }


def _paired_mean_at_n(
    a: dict[int, RunResult], b: dict[int, RunResult], cfg: SweepConfig
) -> dict[str, Any] | None:
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    problems = sorted(
        set.intersection(
            *(set(r.accuracy) for r in [*(a[s] for s in seeds), *(b[s] for s in seeds)])
        )
    )
    if not problems:
        return None
    a_SP = [[100.0 * a[s].accuracy[p] for p in problems] for s in seeds]
    b_SP = [[100.0 * b[s].accuracy[p] for p in problems] for s in seeds]
    d = stats.paired_bootstrap(a_SP, b_SP, cfg.bootstrap, cfg.bootstrap_seed)
    return {
        "diff": d.diff,
        "ci": [d.low, d.high],
        "n": len(seeds),
        "problems": len(problems),
        "per_seed": {str(s): v for s, v in zip(seeds, d.per_seed, strict=True)},
        "sign_agreement": d.sign_agreement,
    }


def default_target(baseline: list[RunResult], smooth: int) -> float | None:
    """Mean over the baseline's finished seeds of its final (smoothed) rollout accuracy."""
    finals = [stats.trailing_mean(r.curve, smooth)[-1] for r in baseline if r.done and r.curve]
    return sum(finals) / len(finals) if finals else None


# --------------------------------------------------------------------------------- claims

METRICS = {  # statistic → (label, unit, digits)
    "mean_at_n": ("mean@n", " points", 2),
    "auc": ("rollout-accuracy AUC", "", 3),
    "steps_to_target": ("steps to target", " steps", 1),
}


def claim(metric: str, a: str, b: str, d: dict[str, Any] | None, note: str = "") -> str:
    """A claim line: 'A > B' (or 'A < B') only when the interval of A − B excludes 0."""
    label, unit, k = METRICS[metric]
    if d is None or d["diff"] is None:
        return f"{label}: {a} vs {b}: no pair of finished seeds"
    diff = f"{d['diff']:+.{k}f}{unit}"
    low, high = d["ci"]
    if low is None:
        return f"{label}: {a} vs {b}: no difference shown (one seed, no CI; A − B = {diff}{note})"
    ci = f"95% CI [{low:+.{k}f}, {high:+.{k}f}]"
    if low > 0 or high < 0:
        return f"{label}: {a} {'>' if d['diff'] > 0 else '<'} {b}: {diff} ({ci}{note})"
    return f"{label}: {a} vs {b}: no difference shown ({ci}{note})"


def _claims(differences: dict[str, Any], baseline: str, target: float | None) -> list[str]:
    lines = []
    for name, diff in differences.items():
        m = diff["mean_at_n"]
        note = ""
        if m is not None:
            agree = round(m["sign_agreement"] * m["n"])
            note = f"; {m['n']} seeds × {m['problems']} problems, sign agrees in {agree}/{m['n']} seeds"
        lines.append(claim("mean_at_n", name, baseline, m, note))
        lines.append(
            claim("auc", name, baseline, diff["auc"], f"; t over {diff['auc']['n']} seeds")
        )
        if target is not None:
            s = diff["steps_to_target"]
            lines.append(
                claim(
                    "steps_to_target",
                    name,
                    baseline,
                    s,
                    f"; target {target:.3f}, {s['n']} seeds reach it in both",
                )
            )
    return lines


def _domain_claims(differences: dict[str, Any], baseline: str) -> list[str]:
    """mean@n claim lines per domain (evaluations with several domains)."""
    lines = []
    for name, diff in differences.items():
        for d, block in diff.get("domains", {}).items():
            m = block["mean_at_n"]
            note = "" if m is None else f"; {m['n']} seeds × {m['problems']} problems"
            lines.append(claim("mean_at_n", f"{name} [{d}]", f"{baseline} [{d}]", m, note))
    return lines


# ------------------------------------------------------------------------------- the report


def _run_row(r: RunResult, target: float | None, smooth: int) -> dict[str, Any]:
    v = _seed_values(r, target, smooth) if r.done else {}
    return {
        "setting": r.setting,
        "seed": r.seed,
        "status": r.status,
        "error": r.error,
        "problems": len(r.accuracy),
        "steps": len(r.steps),
        **{stat: v.get(stat) for stat in STATISTICS},
        "train_wall_s": r.train_wall_s,
        "eval_wall_s": r.eval_wall_s,
    }


def _difference(
    mine: dict[int, RunResult], base: dict[int, RunResult], target: float | None, cfg: SweepConfig
) -> dict[str, Any]:
    """One setting against the baseline: mean@n (bootstrap), AUC and steps to target (t)."""
    a = {seed: _seed_values(r, target, cfg.smooth) for seed, r in mine.items()}
    b = {seed: _seed_values(r, target, cfg.smooth) for seed, r in base.items()}
    out: dict[str, Any] = {"mean_at_n": _paired_mean_at_n(mine, base, cfg)}
    for stat in ("auc", "steps_to_target"):
        out[stat] = _paired_t(
            {k: v[stat] for k, v in a.items()}, {k: v[stat] for k, v in b.items()}
        )
    return out


def _domain_summaries(runs: dict[int, RunResult], domains: list[str]) -> dict[str, Any]:
    """mean@n and mean length per domain, over the seeds."""
    return {
        d: {
            stat: _summary({seed: getattr(in_domain(r, d), stat) for seed, r in runs.items()})
            for stat in ("mean_at_n", "mean_tokens")
        }
        for d in domains
    }


def _domain_differences(
    mine: dict[int, RunResult], base: dict[int, RunResult], domains: list[str], cfg: SweepConfig
) -> dict[str, Any]:
    """mean@n against the baseline on each domain's problems (paired bootstrap)."""
    return {
        d: {
            "mean_at_n": _paired_mean_at_n(
                {k: in_domain(r, d) for k, r in mine.items()},
                {k: in_domain(r, d) for k, r in base.items()},
                cfg,
            )
        }
        for d in domains
    }


def statistics(
    cfg: SweepConfig,
    settings: list[Setting],
    baseline: Setting,
    results: list[RunResult],
    header: dict[str, Any],
) -> dict[str, Any]:
    """The content of ``sweep.json`` (module docstring; field list in docs/sweep.md)."""
    done = {
        s.name: {r.seed: r for r in results if r.setting == s.name and r.done} for s in settings
    }
    base = done[baseline.name]
    target = (
        cfg.target if cfg.target is not None else default_target(list(base.values()), cfg.smooth)
    )
    domains = domains_of(results)
    per_setting = {}
    for s in settings:
        values = {seed: _seed_values(r, target, cfg.smooth) for seed, r in done[s.name].items()}
        block: dict[str, Any] = {"seeds": sorted(done[s.name]), "values": s.values}
        for stat in STATISTICS:
            block[stat] = _summary({seed: v[stat] for seed, v in values.items()})
        if domains:
            block["domains"] = _domain_summaries(done[s.name], domains)
        per_setting[s.name] = block
    differences = {
        s.name: {"vs": baseline.name, **_difference(done[s.name], base, target, cfg)}
        for s in settings
        if s.name != baseline.name
    }
    for name, diff in differences.items():
        if domains:
            diff["domains"] = _domain_differences(done[name], base, domains, cfg)
    source = (
        "--target"
        if cfg.target is not None
        else "baseline final rollout accuracy (mean over seeds)"
    )
    return {
        **header,
        "settings": [s.name for s in settings],
        "baseline": baseline.name,
        "level": stats.LEVEL,
        "bootstrap": {"resamples": cfg.bootstrap, "seed": cfg.bootstrap_seed},
        "target": {"value": target, "source": source, "smooth": cfg.smooth},
        "runs": [_run_row(r, target, cfg.smooth) for r in results],
        "per_setting": per_setting,
        "differences": differences,
        "domains": domains,
        "claims": _claims(differences, baseline.name, target)
        + _domain_claims(differences, baseline.name),
        "failed": [
            {"setting": r.setting, "seed": r.seed, "error": r.error}
            for r in results
            if r.status == "failed"
        ],
        "unfinished": sum(1 for r in results if r.status not in ("done", "failed")),
    }


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buf = stdio.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows([["" if v is None else v for v in row] for row in rows])
    return buf.getvalue()


SETTINGS_HEADER = ["setting", "statistic", "mean", "ci_low", "ci_high", "seeds"]
DIFFERENCES_HEADER = [
    "setting", "baseline", "statistic", "diff", "ci_low", "ci_high", "seeds", "problems",
    "sign_agreement", "method",
]  # fmt: skip
RUNS_HEADER = [
    "setting", "seed", "status", "error", "problems", "steps", *STATISTICS, "train_wall_s",
    "eval_wall_s",
]  # fmt: skip


def write_tables(out: Path, report: dict[str, Any], seeds: list[int]) -> list[Path]:
    """``settings.csv``, ``differences.csv`` and ``runs.csv`` next to ``sweep.json``."""
    settings = [
        [name, stat, b["mean"], *b["ci"], b["n"], *(b["per_seed"].get(str(s)) for s in seeds)]
        for name, block in report["per_setting"].items()
        for stat in STATISTICS
        for b in (block[stat],)
    ] + [
        [
            name,
            f"{stat}[{d}]",
            b["mean"],
            *b["ci"],
            b["n"],
            *(b["per_seed"].get(str(s)) for s in seeds),
        ]
        for name, block in report["per_setting"].items()
        for d, stats_d in block.get("domains", {}).items()
        for stat, b in stats_d.items()
    ]
    header = SETTINGS_HEADER + [f"seed{s}" for s in seeds]
    runs = [[r[k] for k in RUNS_HEADER] for r in report["runs"]]
    return [
        io.atomic_write_text(out / "settings.csv", _csv(header, settings)),
        io.atomic_write_text(out / "differences.csv", _csv(DIFFERENCES_HEADER, _diff_rows(report))),
        io.atomic_write_text(out / "runs.csv", _csv(RUNS_HEADER, runs)),
    ]


def _diff_rows(report: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for name, diff in report["differences"].items():
        for stat in ("mean_at_n", "auc", "steps_to_target"):
            d = diff[stat] or {"diff": None, "ci": [None, None], "n": 0}
            method = "bootstrap seeds x problems" if stat == "mean_at_n" else "t over seeds"
            rows.append(
                [name, diff["vs"], stat, d["diff"], *d["ci"], d["n"], d.get("problems"),
                 d.get("sign_agreement"), method]
            )  # fmt: skip
        for dom, block in diff.get("domains", {}).items():
            d = block["mean_at_n"] or {"diff": None, "ci": [None, None], "n": 0}
            rows.append(
                [name, diff["vs"], f"mean_at_n[{dom}]", d["diff"], *d["ci"], d["n"],
                 d.get("problems"), d.get("sign_agreement"), "bootstrap seeds x problems"]
            )  # fmt: skip
    return rows

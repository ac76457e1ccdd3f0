"""Sampled vs dense TC-OPD on the toy world, several seeds: the study behind docs/results.md.

    .venv/bin/python benchmarks/study_dense_vs_sampled.py --seeds 0,1,2 --out runs/dense-study

For each method (OPD λ=1, G-OPD λ=1.5, TC-OPD λ=(1.5,−0.5)), loss (sampled, dense) and seed:
``tcopd train --toy`` (the toy recipe) then ``tcopd eval toy --n N`` on the toy-math test set.
Finished runs and evaluations are reused (delete --out to start over). Prints, per setting,
mean@n over seeds with a 95 % t interval, and per method the paired difference dense − sampled
(paired by seed and problem) with its standard error and 95 % interval; writes results.json.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

METHODS = {"OPD": "1", "G-OPD": "1.5", "TC-OPD(1.5,-0.5)": "1.5,-0.5"}
LOSSES = ("sampled", "dense")


def tcopd(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tcopd", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def per_problem(samples: Path) -> dict[str, float]:
    """Each problem's own mean correctness."""
    acc: dict[str, list[float]] = {}
    for line in samples.read_text().splitlines():
        r = json.loads(line)
        acc.setdefault(str(r["problem_id"]), []).append(1.0 if r["correct"] else 0.0)
    return {k: sum(v) / len(v) for k, v in acc.items()}


def t_interval(values: list[float]) -> tuple[float, float, float]:
    a = np.asarray(values, dtype=float)
    m = float(a.mean())
    if len(a) < 2:
        return m, math.nan, math.nan
    h = float(stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))
    return m, m - h, m + h


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--eval-n", type=int, default=4)
    ap.add_argument("--out", default="runs/dense-study")
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    results: dict[str, dict] = {}
    for method in args.methods:
        for loss in LOSSES:
            for seed in seeds:
                key = f"{method}/{loss}/seed{seed}"
                run, ev = (
                    out / "runs" / method / loss / f"seed{seed}",
                    out / "eval" / method / loss / f"seed{seed}",
                )
                wall = None
                if not (run / "checkpoints" / "latest").is_file():
                    wall = tcopd(
                        "train",
                        "--toy",
                        "--lambdas",
                        METHODS[method],
                        "--loss",
                        loss,
                        "--seed",
                        str(seed),
                        "--out",
                        str(run),
                        "--overwrite",
                    )
                model = (
                    run
                    / "checkpoints"
                    / (run / "checkpoints" / "latest").read_text().strip()
                    / "model"
                )
                if not (ev / "summary.json").is_file():
                    tcopd(
                        "eval",
                        "toy",
                        "--model",
                        str(model),
                        "--n",
                        str(args.eval_n),
                        "--seed",
                        str(seed),
                        "--out",
                        str(ev),
                    )
                summary = json.loads((ev / "summary.json").read_text())
                samples = next(ev.rglob("samples.jsonl"))
                results[key] = {
                    "mean_at_n": summary["mean_at_n"],
                    "per_problem": per_problem(samples),
                    "train_wall_s": wall,
                }
                print(f"{key}: mean@{args.eval_n} = {summary['mean_at_n']:.1f}", flush=True)
    report: dict[str, dict] = {}
    print(f"\n| method | loss | mean@{args.eval_n} per seed | mean [95% t CI] |\n|---|---|---|---|")
    for method in args.methods:
        for loss in LOSSES:
            vals = [results[f"{method}/{loss}/seed{s}"]["mean_at_n"] for s in seeds]
            m, lo, hi = t_interval(vals)
            report[f"{method}/{loss}"] = {"per_seed": vals, "mean": m, "ci95": [lo, hi]}
            print(
                f"| {method} | {loss} | {' / '.join(f'{v:.1f}' for v in vals)} | {m:.1f} [{lo:.1f}, {hi:.1f}] |"
            )
    print("\npaired dense − sampled (by seed and problem):")
    for method in args.methods:
        diffs = []
        for s in seeds:
            a = results[f"{method}/dense/seed{s}"]["per_problem"]
            b = results[f"{method}/sampled/seed{s}"]["per_problem"]
            diffs += [100.0 * (a[p] - b[p]) for p in a]
        d = np.asarray(diffs)
        se = float(d.std(ddof=1) / math.sqrt(len(d)))
        lo, hi = float(d.mean()) - 1.96 * se, float(d.mean()) + 1.96 * se
        verdict = (
            "dense > sampled" if lo > 0 else "sampled > dense" if hi < 0 else "no difference shown"
        )
        report[f"{method}/dense-minus-sampled"] = {
            "mean": float(d.mean()),
            "se": se,
            "ci95": [lo, hi],
        }
        print(
            f"  {method}: {d.mean():+.1f} ± {se:.1f} points (95% CI [{lo:+.1f}, {hi:+.1f}]): {verdict}"
        )
    (out / "results.json").write_text(json.dumps({"results": results, "report": report}, indent=1))


if __name__ == "__main__":
    main()

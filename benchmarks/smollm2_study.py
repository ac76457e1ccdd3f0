"""The real-model study of docs/results.md ("A real model"), read off a finished `tcopd sweep`.

    tcopd prepare smollm2 && tcopd prepare toy
    tcopd sweep --config examples/sweep_smollm2.yaml --out runs/sweep-smollm2
    tcopd eval toy --model ~/.cache/tcopd/smollm2 --n 2 --limit 30 --max-tokens 96 \\
        --out runs/eval-smollm2                       # the student before, same sampling
    .venv/bin/python benchmarks/smollm2_study.py runs/sweep-smollm2 runs/eval-smollm2

Per model (the student before; each setting's final models, seeds pooled): accuracy, the rate
of a boxed final answer (the grader's ``extracted`` is not null), the rate of a response with at
least one line of arithmetic in the expert prompt's style (``40 - 7 = 33``), the rate of responses
cut at the token limit, and the mean response length in tokens, each with a 95 % interval
from a bootstrap over problems (each problem's value is the mean over its seeds × samples;
10,000 resamples, seed 0). Differences against the student and
between settings are paired by problem, same bootstrap; an ordering is claimed only when the
interval excludes 0.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

RESAMPLES = 10_000
EQUATION = re.compile(r"\d+\s*[-+]\s*\d+\s*=\s*\d+")  # the expert prompt's style: "40 - 7 = 33"
STATS = {
    "accuracy": lambda s: float(bool(s.get("correct"))),
    "boxed": lambda s: float(s.get("extracted") is not None),
    "equation": lambda s: float(EQUATION.search(s["response"]) is not None),
    "truncated": lambda s: float(s.get("finish_reason") == "length"),
    "length": lambda s: float(s["num_tokens"]),
}
HEADS = ["accuracy (%)", "boxed (%)", "with an equation (%)", "truncated (%)", "length (tokens)"]


def per_problem(sample_files: list[Path]) -> dict[str, dict[str, float]]:
    """``{statistic: {problem_id: mean over the files' samples of that problem}}``."""
    acc: dict[str, dict[str, list[float]]] = {k: defaultdict(list) for k in STATS}
    for f in sample_files:
        for line in f.read_text().splitlines():
            s = json.loads(line)
            for k, fn in STATS.items():
                acc[k][str(s["problem_id"])].append(fn(s))
    return {k: {p: float(np.mean(v)) for p, v in d.items()} for k, d in acc.items()}


def interval(values_P: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float]:
    """Mean and 95 % percentile-bootstrap interval over problems."""
    idx = rng.integers(0, len(values_P), size=(RESAMPLES, len(values_P)))
    means = values_P[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(values_P.mean()), float(lo), float(hi)


def models(sweep: Path, student_eval: Path) -> dict[str, list[Path]]:
    out = {"student": [student_eval / "samples.jsonl"]}
    for setting in sorted(p for p in (sweep / "runs").iterdir() if p.is_dir()):
        files = sorted(setting.glob("seed*/eval/samples.jsonl"))
        if files:
            out[setting.name] = files
    return out


def fmt(stat: str, m: float, lo: float, hi: float, diff: bool = False) -> str:
    scale = 1 if stat == "length" else 100
    sign = "+" if diff else ""
    return f"{scale * m:{sign}.1f} [{scale * lo:{sign}.1f}, {scale * hi:{sign}.1f}]"


def main(sweep: Path, student_eval: Path) -> None:
    found = {name: per_problem(files) for name, files in models(sweep, student_eval).items()}
    problems = sorted(set.intersection(*(set(v["accuracy"]) for v in found.values())))
    rng = np.random.default_rng(0)
    print(f"| model | {' | '.join(HEADS)} |")
    print("|---|" + "---|" * len(HEADS))
    for name, v in found.items():
        cells = [fmt(k, *interval(np.array([v[k][p] for p in problems]), rng)) for k in STATS]
        print(f"| {name} | {' | '.join(cells)} |")
    heads = [h.replace("(%)", "(points)") for h in HEADS]
    print(f"\n| difference | {' | '.join(heads)} |")
    print("|---|" + "---|" * len(HEADS))
    names = list(found)
    pairs = [(n, "student") for n in names[1:]] + [
        (a, b) for i, a in enumerate(names[1:], 1) for b in names[i + 1 :]
    ]
    for a, b in pairs:
        cells = []
        for k in STATS:
            d = np.array([found[a][k][p] - found[b][k][p] for p in problems])
            cells.append(fmt(k, *interval(d, rng), diff=True))
        print(f"| {a} − {b} | {' | '.join(cells)} |")
    print(
        f"\n{len(problems)} problems; 95 % bootstrap intervals over problems ({RESAMPLES} resamples)"
    )


def training(sweep: Path) -> None:
    """Per run: the token mean of the trainer's per-token reward (``reward_mean`` in
    metrics.jsonl; docs/algorithm.md) and the rollouts' mean length, first 3 steps → last 3."""
    print("\n| run | reward, steps 1–3 → last 3 | rollout length, steps 1–3 → last 3 |")
    print("|---|---|---|")
    for run in sorted((sweep / "runs").glob("*/seed*")):
        f = run / "train" / "metrics.jsonl"
        if not f.is_file():
            continue
        rows = [json.loads(x) for x in f.read_text().splitlines()]
        r = [x["reward_mean"] for x in rows]
        n = [x["response_len_mean"] for x in rows]
        print(
            f"| {run.parent.name} {run.name} | {np.mean(r[:3]):+.2f} → {np.mean(r[-3:]):+.2f} "
            f"| {np.mean(n[:3]):.1f} → {np.mean(n[-3:]):.1f} |"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
    training(Path(sys.argv[1]))

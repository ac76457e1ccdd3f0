"""The real-model study of docs/results.md §11, read off finished sweeps and the search's evals.

    .venv/bin/python benchmarks/arith_study.py --student runs/arith-search/add20-n4-l200/student \\
        --expert runs/arith-search/add20-n4-l200/expert runs/sweep-arith [runs/sweep-arith-lora]

Per setting (each sweep's settings, seeds pooled) and for the student and the expert: mean@4
accuracy and mean response length (tokens) with a 95 % interval from a two-level bootstrap
(resample the seeds, then the problems; 10,000 resamples, seed 0). Against the student: the
difference (paired by problem) and the share of the expert's margin it closes,
(setting − student) / (expert − student). Between settings of one sweep: differences paired by
seed and problem. An ordering is claimed only where the interval excludes 0.

Training: per run, rollout accuracy (the trainer's ``rollout_accuracy``) and the expert's
log-ratio against π_ref (``logratio/expert``: token mean of log p_expert − log π_ref on the
student's own samples, the expert's term of the reward over λ_e) over the first two steps and the
last four, and the gate statistic of ``tests/test_real_arith.py``: the mean log-ratio of steps
4–6 minus steps 1–2, with its minimum over the runs that score π_ref (G-OPD, TC-OPD; OPD's
log-ratio is against π_old, docs/train.md "What a step skips").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

RESAMPLES = 10_000
GATE_EARLY, GATE_LATE = (1, 2), (4, 6)  # steps (1-based, inclusive) of the gate statistic


def samples(path: Path) -> dict[str, dict[str, float]]:
    """``{"accuracy" | "length": {problem_id: mean over the file's samples}}``."""
    acc: dict[str, list[float]] = {}
    length: dict[str, list[float]] = {}
    for line in (path / "samples.jsonl").read_text().splitlines():
        s = json.loads(line)
        acc.setdefault(str(s["problem_id"]), []).append(1.0 if s["correct"] else 0.0)
        length.setdefault(str(s["problem_id"]), []).append(float(s["num_tokens"]))
    return {
        "accuracy": {k: float(np.mean(v)) for k, v in acc.items()},
        "length": {k: float(np.mean(v)) for k, v in length.items()},
    }


def table(
    per_seed: list[dict[str, dict[str, float]]], stat: str, problems: list[str]
) -> np.ndarray:
    """Seeds × problems array of one statistic."""
    return np.array([[s[stat][p] for p in problems] for s in per_seed])


def boot(values_SP: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float]:
    """Mean and 95 % interval, resampling seeds then problems (one seed: problems only)."""
    s_n, p_n = values_SP.shape
    seeds = rng.integers(0, s_n, size=(RESAMPLES, s_n))
    probs = rng.integers(0, p_n, size=(RESAMPLES, p_n))
    means = np.array([values_SP[seeds[i]][:, probs[i]].mean() for i in range(RESAMPLES)])
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(values_SP.mean()), float(lo), float(hi)


def share(method_SP, student_P, expert_P, rng) -> tuple[float, float, float]:
    """(method − student) / (expert − student), both resampled together."""
    s_n, p_n = method_SP.shape
    out = []
    for _ in range(RESAMPLES // 5):
        seeds = rng.integers(0, s_n, s_n)
        probs = rng.integers(0, p_n, p_n)
        gain = method_SP[seeds][:, probs].mean() - student_P[probs].mean()
        out.append(gain / (expert_P[probs].mean() - student_P[probs].mean()))
    point = (method_SP.mean() - student_P.mean()) / (expert_P.mean() - student_P.mean())
    lo, hi = np.percentile(out, [2.5, 97.5])
    return float(point), float(lo), float(hi)


def settings(sweep: Path) -> dict[str, list[Path]]:
    out = {}
    for setting in sorted(p for p in (sweep / "runs").iterdir() if p.is_dir()):
        dirs = sorted(d.parent for d in setting.glob("seed*/eval/summary.json"))
        if dirs:
            out[setting.name] = dirs
    return out


def cell(
    m: float, lo: float, hi: float, scale: float = 100, sign: str = "", digits: int = 1
) -> str:
    f = f"{sign}.{digits}f"
    return f"{scale * m:{f}} [{scale * lo:{f}}, {scale * hi:{f}}]"


def gate_statistic(rows: list[dict]) -> float | None:
    """Mean ``logratio/expert`` of steps GATE_LATE minus GATE_EARLY (None: π_ref not scored)."""
    by_step = {int(r["step"]): r for r in rows if "reward_mean" in r}
    if any(r.get("kl_ref") is None for r in by_step.values()):
        return None
    ratio = {s: r["logratio/expert"] for s, r in by_step.items()}
    early = np.mean([ratio[s] for s in range(GATE_EARLY[0], GATE_EARLY[1] + 1)])
    late = np.mean([ratio[s] for s in range(GATE_LATE[0], GATE_LATE[1] + 1)])
    return float(late - early)


def curves(sweep: Path) -> list[tuple[str, str, str, float | None]]:
    """(run, rollout accuracy first two → last four steps (%), the same for the expert's
    log-ratio, gate statistic) per run."""
    out = []
    for f in sorted((sweep / "runs").glob("*/seed*/train/metrics.jsonl")):
        rows = [json.loads(x) for x in f.read_text().splitlines()]
        rows = [r for r in rows if "reward_mean" in r]
        acc = [100 * r["rollout_accuracy"] for r in rows]
        ratio = [r["logratio/expert"] for r in rows]
        out.append(
            (
                f"{f.parents[2].name} {f.parents[1].name}",
                f"{np.mean(acc[:2]):.1f} → {np.mean(acc[-4:]):.1f}",
                f"{np.mean(ratio[:2]):+.2f} → {np.mean(ratio[-4:]):+.2f}",
                gate_statistic(rows),
            )
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--student", type=Path, required=True)
    ap.add_argument("--expert", type=Path, required=True)
    ap.add_argument("sweeps", type=Path, nargs="+")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    student, expert = samples(args.student), samples(args.expert)
    problems = sorted(student["accuracy"])
    st = {k: np.array([student[k][p] for p in problems]) for k in student}
    ex = {k: np.array([expert[k][p] for p in problems]) for k in expert}
    print(
        "| model | accuracy (%) | length (tokens) | − student (points) | share of the expert's margin |"
    )
    print("|---|---|---|---|---|")
    for name, m in (("student", st), ("expert (prompt)", ex)):
        print(
            f"| {name} | {cell(*boot(m['accuracy'][None], rng))} | {cell(*boot(m['length'][None], rng), 1)} | | |"
        )
    for sweep in args.sweeps:
        found = {n: [samples(d) for d in dirs] for n, dirs in settings(sweep).items()}
        for name, per_seed in found.items():
            acc, length = table(per_seed, "accuracy", problems), table(per_seed, "length", problems)
            gain = boot(acc - st["accuracy"][None], rng)
            frac = share(acc, st["accuracy"], ex["accuracy"], rng)
            print(
                f"| {sweep.name}/{name} ({len(per_seed)} seeds) | {cell(*boot(acc, rng))} "
                f"| {cell(*boot(length, rng), 1)} | {cell(*gain, sign='+')} | {cell(*frac, 1, digits=2)} |"
            )
        names = list(found)
        print(f"\n{sweep.name}: differences, paired by seed and problem")
        print("| difference | accuracy (points) | length (tokens) |\n|---|---|---|")
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                n = min(len(found[a]), len(found[b]))
                cells = []
                for stat, scale in (("accuracy", 100), ("length", 1)):
                    d = table(found[a][:n], stat, problems) - table(found[b][:n], stat, problems)
                    cells.append(cell(*boot(d, rng), scale, "+"))
                print(f"| {a} − {b} | {' | '.join(cells)} |")
        print(
            "\n| run | rollout accuracy (%), steps 1–2 → last 4 | expert log-ratio vs π_ref, "
            "steps 1–2 → last 4 | gate: log-ratio steps 4–6 − 1–2 |"
        )
        print("|---|---|---|---|")
        rows = curves(sweep)
        for run, acc, ratio, gate in rows:
            print(f"| {run} | {acc} | {ratio} | {'—' if gate is None else f'{gate:+.3f}'} |")
        gates = [r[3] for r in rows if r[3] is not None]
        if gates:
            print(f"gate statistic: min {min(gates):+.3f} over {len(gates)} runs")
    print(f"\n{len(problems)} problems; {RESAMPLES} bootstrap resamples (seeds, then problems)")


if __name__ == "__main__":
    main()

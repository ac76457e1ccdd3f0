"""How much a low-rank student gives up on the toy world (issue 23; docs/results.md §8).

    tcopd sweep --config examples/sweep_toy_lora.yaml --out runs/sweep-lora       # 24 runs, 23 min
    # full weights, same seeds: the sampled loss (lr 1e-3) and the dense loss (lr 5e-4)
    tcopd sweep --toy --lambdas 1 --lambdas 1.5,-0.5 --seeds 0,1,2 --eval toy --eval-n 4 \
        --out runs/sweep-full-sampled
    tcopd sweep --config examples/sweep_toy_dense_lr.yaml --seeds 0,1,2 --out runs/sweep-full-dense
    # G-OPD (1.5) with LoRA r=16, for TC-OPD − G-OPD within the LoRA student
    tcopd sweep --toy --lora --lora-rank 16 --lora-alpha 32 --lambdas 1.5 --seeds 0,1,2 \
        --eval toy --eval-n 4 --out runs/sweep-lora-gopd
    python benchmarks/lora_quality.py runs/sweep-lora runs/sweep-full-sampled \
        runs/sweep-full-dense runs/sweep-lora-gopd

Every finished run of the given sweeps is grouped by what its ``train.yaml`` says (λ, loss,
LoRA rank, lr); a LoRA group is compared with the full-weight group of the same λ and loss.
Per group: mean@4 (%) of each seed's final model, the mean over seeds with a 95 % t interval,
LoRA − full over the seeds both have with the sweep's own interval (a bootstrap that resamples
seeds and problems, ``tcopd.runtime.evaluation.stats.paired_bootstrap``), and the median wall time of one
training (``sweep_state.json``; a median, since a run resumed after an interruption records
only its second part). A second table compares the methods within one kind of student (same
loss, rank and lr): TC-OPD (1.5, −0.5) − OPD, and − G-OPD (1.5) where G-OPD runs are given.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import yaml

from tcopd.runtime.evaluation import stats

METHODS = {"1": "OPD", "1.5": "G-OPD (1.5)", "1.5,-0.5": "TC-OPD (1.5, −0.5)"}


def _accuracy(run: Path) -> dict[str, float]:
    """problem id → fraction of its samples graded correct (the sweep's mean@n per problem)."""
    correct: dict[str, list[bool]] = defaultdict(list)
    for line in (run / "eval" / "samples.jsonl").read_text().splitlines():
        row = json.loads(line)
        correct[str(row["problem_id"])].append(row.get("correct") is True)
    return {p: sum(v) / len(v) for p, v in correct.items()}


def _groups(sweeps: list[Path]) -> dict[tuple, dict[int, dict]]:
    """(λ, loss, rank or 0, lr) → seed → {accuracy, train_s} over the sweeps' finished runs."""
    groups: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for sweep in sweeps:
        state = json.loads((sweep / "sweep_state.json").read_text())["runs"]
        for setting in sorted(p for p in (sweep / "runs").iterdir() if p.is_dir()):
            for run in sorted(setting.glob("seed*")):
                if not (run / "eval" / "summary.json").exists():
                    continue
                cfg = yaml.safe_load((run / "train.yaml").read_text())
                rank = int(cfg["lora_rank"]) if cfg.get("lora") else 0
                key = (str(cfg["lambdas"]), cfg["loss"], rank, float(cfg["lr"]))
                wall = state.get(f"{setting.name}/{run.name}", {}).get("train_wall_s")
                groups[key][int(cfg["seed"])] = {"accuracy": _accuracy(run), "train_s": wall}
    return groups


def _per_seed(runs: dict[int, dict]) -> dict[int, float]:
    return {s: 100.0 * sum(r["accuracy"].values()) / len(r["accuracy"]) for s, r in runs.items()}


def _difference(a: dict[int, dict], b: dict[int, dict]) -> stats.PairedDifference | None:
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    problems = sorted(set.intersection(*(set(x[s]["accuracy"]) for x in (a, b) for s in seeds)))
    a_SP = [[100.0 * a[s]["accuracy"][p] for p in problems] for s in seeds]
    b_SP = [[100.0 * b[s]["accuracy"][p] for p in problems] for s in seeds]
    return stats.paired_bootstrap(a_SP, b_SP)


def table(sweeps: list[Path]) -> list[str]:
    groups = _groups(sweeps)
    lines = [
        "| method | loss | student | lr | per seed | mean [95 % CI] | LoRA − full [95 % CI] "
        "| train s (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(groups, key=lambda k: (k[1] != "sampled", k[0], k[2], k[3]))
    for key in order:
        lam, loss, rank, lr = key
        runs = groups[key]
        seeds = _per_seed(runs)
        iv = stats.t_interval(list(seeds.values()))
        ci = f"{iv.mean:.1f} [{iv.low:.1f}, {iv.high:.1f}]" if iv.n > 1 else f"{iv.mean:.1f}"
        diff = "—"
        if rank:
            full = [k for k in groups if k[:3] == (lam, loss, 0)]
            d = _difference(runs, groups[full[0]]) if len(full) == 1 else None
            if d is not None:
                diff = f"{d.diff:+.1f} [{d.low:+.1f}, {d.high:+.1f}] ({d.seeds} seeds)"
        walls = [r["train_s"] for r in runs.values() if r["train_s"]]
        wall = f"{statistics.median(walls):.0f}" if walls else "—"
        per = " / ".join(f"{seeds[s]:.1f}" for s in sorted(seeds))
        student = f"LoRA r={rank}" if rank else "full"
        lines.append(
            f"| {METHODS.get(lam, lam)} | {loss} | {student} | {lr:g} | {per} | {ci} | {diff} "
            f"| {wall} |"
        )
    return lines


def methods_table(sweeps: list[Path]) -> list[str]:
    """TC-OPD (1.5, −0.5) − OPD and − G-OPD within each (loss, rank, lr) student."""
    groups = _groups(sweeps)
    lines = [
        "| loss | student | lr | comparison | difference [95 % CI] | seeds agreeing |",
        "|---|---|---|---|---|---|",
    ]
    for key in sorted(groups, key=lambda k: (k[1] != "sampled", k[2], k[3])):
        lam, loss, rank, lr = key
        if lam != "1.5,-0.5":
            continue
        for other in ("1", "1.5"):
            base = groups.get((other, loss, rank, lr))
            d = _difference(groups[key], base) if base else None
            if d is None:
                continue
            agree = round(d.sign_agreement * d.seeds)
            lines.append(
                f"| {loss} | {f'LoRA r={rank}' if rank else 'full'} | {lr:g} | TC-OPD − "
                f"{METHODS[other]} | {d.diff:+.1f} [{d.low:+.1f}, {d.high:+.1f}] "
                f"| {agree}/{d.seeds} |"
            )
    return lines


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(f"usage: {sys.argv[0]} SWEEP_DIR [SWEEP_DIR ...]")
    dirs = [Path(p) for p in sys.argv[1:]]
    print("\n".join(table(dirs)) + "\n\n" + "\n".join(methods_table(dirs)))

"""The task search of docs/results.md §11: where can SmolLM2-135M-Instruct's accuracy move?

    tcopd prepare smollm2
    .venv/bin/python benchmarks/arith_search.py --out runs/arith-search                  # screen
    .venv/bin/python benchmarks/arith_search.py --out runs/arith-search --tasks add20 \\
        --limit 200 --n 4                                                              # confirm

For each arith task (``tcopd prepare arith --task NAME``, seed 0, its 200 held-out problems) it
evaluates three models with ``tcopd eval`` (τ = 1, as in training, ``--problems-per-call 50``):
the student (SmolLM2 on the plain question), the expert (the same weights behind
``examples/arith/expert.yaml``) and the anti-expert (behind ``examples/arith/hedging.yaml``),
and prints mean@n ± its standard error over problems, the expert's and the anti-expert's
margins over the student with a 95 % interval (paired by problem, normal approximation), and
whether the task meets the issue's bar: student in [10 %, 60 %], expert ≥ student + 15, the
anti-expert below the student. Results: ``<out>/search.json`` and one eval directory per cell.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from tcopd.pipelines import eval as evaluation
from tcopd.pipelines.eval_config import EvalConfig
from tcopd.runtime.data import arith
from tcopd.runtime.data.io import tcopd_cache_dir

ROOT = Path(__file__).resolve().parent.parent
ROLES = {
    "student": None,
    "expert": str(ROOT / "examples/arith/expert.yaml"),
    "anti-expert": str(ROOT / "examples/arith/hedging.yaml"),
}


def per_problem(out_dir: Path) -> dict[str, float]:
    """Each problem's mean correctness in ``out_dir/samples.jsonl``."""
    sums: dict[str, list[float]] = {}
    for line in (out_dir / "samples.jsonl").read_text().splitlines():
        row = json.loads(line)
        sums.setdefault(str(row["problem_id"]), []).append(1.0 if row["correct"] else 0.0)
    return {k: sum(v) / len(v) for k, v in sums.items()}


def mean_se(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    var = sum((v - m) ** 2 for v in values) / max(len(values) - 1, 1)
    return 100 * m, 100 * math.sqrt(var / len(values))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/arith-search"))
    ap.add_argument("--tasks", default=",".join(arith.TASKS))
    ap.add_argument("--limit", type=int, default=100, help="held-out problems per task")
    ap.add_argument("--n", type=int, default=2, help="samples per problem")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--model", default=str(tcopd_cache_dir() / "smollm2"))
    args = ap.parse_args()
    results = {}
    for task in args.tasks.split(","):
        data = args.out / "data" / task
        arith.write_task(task, data)
        scores = {}
        for role, context in ROLES.items():
            out = args.out / f"{task}-n{args.n}-l{args.limit}" / role
            cfg = EvalConfig(
                data=str(data / "test.parquet"),
                models=[args.model],
                n=args.n,
                limit=args.limit,
                max_tokens=args.max_tokens,
                context=context,
                problems_per_call=50,
                out=str(out),
                device="cpu",
            )
            evaluation.run(cfg)
            scores[role] = per_problem(out)
        ids = sorted(scores["student"])
        row = {r: mean_se([s[i] for i in ids]) for r, s in scores.items()}
        for r in ("expert", "anti-expert"):
            m, se = mean_se([scores[r][i] - scores["student"][i] for i in ids])
            row[f"{r} - student"] = (m, se)
        student, expert = row["student"][0], row["expert - student"][0]
        row["meets"] = bool(
            10 <= student <= 60 and expert >= 15 and row["anti-expert - student"][0] < 0
        )
        results[task] = row
        cells = "  ".join(f"{r} {v[0]:.1f} ± {v[1]:.1f}" for r, v in row.items() if r != "meets")
        print(f"{task}: {cells}  meets: {row['meets']}", flush=True)
    (args.out / f"search-n{args.n}-l{args.limit}.json").write_text(json.dumps(results, indent=1))
    for task, row in results.items():
        e, a = row["expert - student"], row["anti-expert - student"]
        print(
            f"| {task} | {row['student'][0]:.1f} ± {row['student'][1]:.1f} "
            f"| {row['expert'][0]:.1f} ± {row['expert'][1]:.1f} "
            f"| {row['anti-expert'][0]:.1f} ± {row['anti-expert'][1]:.1f} "
            f"| {e[0]:+.1f} [{e[0] - 1.96 * e[1]:+.1f}, {e[0] + 1.96 * e[1]:+.1f}] "
            f"| {a[0]:+.1f} [{a[0] - 1.96 * a[1]:+.1f}, {a[0] + 1.96 * a[1]:+.1f}] "
            f"| {'yes' if row['meets'] else 'no'} |"
        )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    sys.exit(main())

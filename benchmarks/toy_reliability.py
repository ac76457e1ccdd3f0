"""The learning-reliability table of issue 21 (item 2), read off a finished `tcopd sweep`.

    .venv/bin/tcopd sweep --config examples/sweep_toy_claims.yaml --out runs/sweep-claims
    .venv/bin/tcopd eval toy --n 4 --out runs/eval-student          # the student, same sampling
    .venv/bin/python benchmarks/toy_reliability.py runs/sweep-claims runs/eval-student

Per setting: mean@4 (%) of every seed's final model, their mean and standard deviation over
seeds, the smallest gain over the student, and two shapes of the rollout-accuracy curve:
*early dip* — the lowest rollout accuracy of steps 2–5 minus step 1's (an early collapse is a
large negative number), and *take-off* — the first step whose trailing 3-step mean is 20 points
above step 1's accuracy (late or scattered take-off steps are the bimodal runs the issue saw).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "train" / "metrics.jsonl").read_text().splitlines()]


def _takeoff(acc: list[float], rise: float = 0.2) -> int | None:
    for i in range(len(acc)):
        window = acc[max(0, i - 2) : i + 1]
        if sum(window) / len(window) >= acc[0] + rise:
            return i + 1
    return None


def table(sweep: Path, student: float) -> list[dict]:
    out = []
    for setting in sorted(p for p in (sweep / "runs").iterdir() if p.is_dir()):
        seeds = sorted(setting.glob("seed*"), key=lambda p: int(p.name[4:]))
        finals, dips, takeoffs = [], [], []
        for run in seeds:
            summary = run / "eval" / "summary.json"
            if not summary.is_file():
                continue
            finals.append(json.loads(summary.read_text())["mean_at_n"])
            acc = [r["rollout_accuracy"] for r in _rows(run)]
            dips.append(100 * (min(acc[1:5]) - acc[0]))
            takeoffs.append(_takeoff(acc))
        if not finals:
            continue
        out.append(
            {
                "setting": setting.name,
                "per_seed": finals,
                "mean": statistics.fmean(finals),
                "sd": statistics.stdev(finals) if len(finals) > 1 else None,
                "min_gain": min(finals) - student,
                "early_dip": dips,
                "takeoff": takeoffs,
            }
        )
    return out


def main(sweep: str, student_eval: str) -> None:
    student = json.loads((Path(student_eval) / "summary.json").read_text())["mean_at_n"]
    print(f"student mean@4 {student:.1f} %")
    print(
        "| setting | mean@4 per seed | mean | SD | min − student | early dip (pts) | take-off step |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in table(Path(sweep), student):
        sd = "—" if r["sd"] is None else f"{r['sd']:.1f}"
        print(
            f"| {r['setting']} | {' / '.join(f'{v:.1f}' for v in r['per_seed'])} | "
            f"{r['mean']:.1f} | {sd} | {r['min_gain']:+.1f} | "
            f"{' / '.join(f'{v:+.0f}' for v in r['early_dip'])} | "
            f"{' / '.join('—' if v is None else str(v) for v in r['takeoff'])} |"
        )


if __name__ == "__main__":
    main(*sys.argv[1:3])

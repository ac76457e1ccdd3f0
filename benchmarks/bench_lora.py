"""Benchmark: full fine-tuning vs ``--lora`` — peak process memory, trainable parameters, step time.

    .venv/bin/python benchmarks/bench_lora.py                     # toy student and SmolLM2
    .venv/bin/python benchmarks/bench_lora.py --models toy --ranks 16,64

Per model and variant (full; ``--lora --lora-rank r`` for each ``--ranks``), one ``tcopd train``
subprocess, one after another (never two at once): OPD (λ = 1; toy: the toy world's expert;
SmolLM2: the same weights as expert), HF engine, ZeRO 0, fp32, ``--steps`` steps (the first a
warm-up), no checkpoint, no evaluation, no grading.

- **peak RSS**: the largest resident set of the subprocess (``ru_maxrss`` from ``os.wait4``),
  model loading included — what the machine must hold;
- **trainable parameters**: counted on the model as tcopd builds it (``runtime/models/lora.py``'s
  ``wrap`` for LoRA), outside the timed runs;
- **step time**: the median ``time_step_s`` of the steps after the warm-up (metrics.jsonl), and
  its update phase alone (``time_update_s``: forward + backward + AdamW), where LoRA saves work;
  rollouts and teacher scoring do the same work in both variants.

Models: ``toy`` — the shipped toy world's student (0.54 M parameters; the toy recipe's 32 prompts
× 4 rollouts × 96 tokens); ``smollm2`` — SmolLM2-135M-Instruct (``tcopd prepare smollm2``;
4 prompts × 2 rollouts × 96 tokens in chat form, the study's shapes). Results: the printed table
and ``OUT/results.json``. Run it on a quiet machine: step times are compared within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ENV = {"DS_BUILD_OPS": "0", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def model_args(name: str) -> list[str]:
    """Student, expert, data and shapes of one benchmark model."""
    from tcopd.runtime.data.io import tcopd_cache_dir
    from tcopd.runtime.toy import ensure_toy

    toy = ensure_toy()
    if name == "toy":
        return ["--toy"]  # the toy world's student, expert and data, the toy recipe's shapes
    path = str(Path(os.environ.get("TCOPD_SMOLLM2_DIR", tcopd_cache_dir() / "smollm2")))
    if not (Path(path) / "config.json").is_file():
        sys.exit(f"no SmolLM2 at {path}: run `tcopd prepare smollm2` first")
    return [
        "--student", path, "--expert", path, "--data", str(toy.train_file), "--template", "chat",
        "--batch-size", "4", "--samples-per-prompt", "2", "--max-response-tokens", "96",
        "--max-prompt-tokens", "128", "--lr", "5e-5", "--mini-batches", "2",
    ]  # fmt: skip


def trainable(name: str, rank: int | None) -> tuple[int, int]:
    """(trainable parameters of the student as ``tcopd train`` builds it, the base model's)."""
    from tcopd.runtime.models import lora
    from tcopd.runtime.models.loading import load_causal_lm
    from tcopd.runtime.toy import ensure_toy

    args = model_args(name)
    model = load_causal_lm(ensure_toy().student if name == "toy" else args[1])
    base = sum(p.numel() for p in model.parameters())
    if rank is None:
        return base, base
    model = lora.wrap(model, lora.LoraSettings(rank, 2.0 * rank), "bench").model
    return sum(p.numel() for p in model.parameters() if p.requires_grad), base


def run(name: str, rank: int | None, steps: int, out: Path) -> dict:
    """One ``tcopd train`` subprocess: peak RSS, wall time, its metrics rows."""
    run_dir = out / f"{name}-{'full' if rank is None else f'lora{rank}'}"
    cmd = [sys.executable, "-m", "tcopd", "train", *model_args(name), "--lambdas", "1"]
    cmd += ["--steps", str(steps), "--save-every", "0", "--eval-every", "0", "--no-grade"]
    cmd += ["--engine", "hf", "--zero-stage", "0", "--dtype", "float32", "--device", "cpu"]
    cmd += ["--seed", "0", "--out", str(run_dir), "--overwrite"]
    if rank is not None:
        cmd += ["--lora", "--lora-rank", str(rank), "--lora-alpha", str(2 * rank)]
    t0 = time.perf_counter()
    with (out / f"{run_dir.name}.log").open("w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **ENV}
        )
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)} (log: {out / f'{run_dir.name}.log'})")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = rows[1:] or rows  # the first step warms up (allocator, DeepSpeed's first step)
    return {
        "model": name,
        "variant": "full" if rank is None else f"lora r={rank}",
        "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9,
        "wall_s": time.perf_counter() - t0,
        "step_s": statistics.median(r["time_step_s"] for r in timed),
        "update_s": statistics.median(r["time_update_s"] for r in timed),
        "command": " ".join(cmd),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default="toy,smollm2", help="toy, smollm2 (comma-separated)")
    ap.add_argument("--ranks", default="16", help="LoRA ranks to compare with full (default 16)")
    ap.add_argument("--steps", type=int, default=4, help="steps per run, the first a warm-up")
    ap.add_argument("--out", default="runs/bench-lora", help="output directory")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in a.models.split(","):
        for rank in [None, *(int(r) for r in a.ranks.split(","))]:
            r = run(name, rank, a.steps, out)
            r["trainable"], r["total"] = trainable(name, rank)
            results.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "command"}), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(
        "\n| model | variant | trainable params (% of the base model) | peak RSS (GB) | step (s) | update (s) |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for r in results:
        full = next(x for x in results if x["model"] == r["model"] and x["variant"] == "full")
        print(
            f"| {r['model']} | {r['variant']} | {r['trainable']:,} ({100 * r['trainable'] / r['total']:.2f} %) "
            f"| {r['peak_rss_gb']:.2f} ({r['peak_rss_gb'] / full['peak_rss_gb']:.2f}×) "
            f"| {r['step_s']:.2f} ({r['step_s'] / full['step_s']:.2f}×) "
            f"| {r['update_s']:.2f} ({r['update_s'] / full['update_s']:.2f}×) |"
        )


if __name__ == "__main__":
    main()

"""Part: one step off — ``tcopd train --max-staleness 0`` then ``1``, back to back, on one GPU.

Does generating the next batch while this one is scored and trained on make a step shorter on
a GPU, and by how much of what the schedule allows? A random Qwen3 of ~0.2 B parameters (16
layers, hidden 1024, the test suite's word-level tokenizer: random weights rarely stop, so
responses run to their length) is the student; two random teachers of the same shape; 12 steps
of 16 prompts × 4 samples × 256 tokens, bf16, vLLM for rollouts when it imports (else the HF
engine), ``--no-grade``. The same run at ``--max-staleness 0`` and ``1``; step 1 of each (warm
up, and one step off its batch is generated in place) is left out of the means.

Rows: ``staleness 0`` and ``staleness 1`` (mean step seconds ± standard error, the phase
means; for 1, that batch 1 has staleness 0 and every later one exactly 1), ``overlap`` (the
ratio of the two mean step times with a 95 % interval — a t interval on the log ratio, the
steps treated as independent — and the ideal max(generate, score + update) + sync of the
staleness-0 run), ``IS weights`` (one step off: mean, min, capped fraction, ESS,
KL(μ ‖ π_old)). ``--tiny``: the tiny world on CPU, 3 steps each, HF engine.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROWS = ["staleness 0", "staleness 1", "overlap", "IS weights"]
MODEL = dict(  # ~0.2 B parameters with the tiny tokenizer's vocabulary
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=16,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=64,
    max_position_embeddings=1024,
)


def run(opts: dict[str, Any], rec) -> None:
    import importlib.util

    import torch

    tiny = bool(opts.get("tiny"))
    cuda = torch.cuda.is_available() and not opts.get("cpu")
    repo, out = Path(opts["repo"]), Path(opts["out"])
    sys.path.insert(0, str(repo / "tests"))
    from train_fixtures import make_world, tiny_args

    root = out / "ahead-run"
    shutil.rmtree(root, ignore_errors=True)
    vllm = cuda and importlib.util.find_spec("vllm") is not None
    world = make_world(root / "world", n_prompts=64, **({} if tiny else MODEL))
    steps = 3 if tiny else 12
    extra = ["--steps", str(steps), "--save-every", "0", "--no-grade"]
    if not tiny:
        extra += ["--batch-size", "16", "--samples-per-prompt", "4"]
        extra += ["--max-response-tokens", "256", "--dtype", "bfloat16", "--mini-batches", "1"]
    extra += ["--device", "cuda" if cuda else "cpu", "--engine", "vllm" if vllm else "hf"]
    rec.set_info(device="cuda" if cuda else "cpu", engine="vllm" if vllm else "hf", steps=steps)
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    limit = float(opts.get("limit_s") or 300.0)
    t_start = time.perf_counter()
    runs: dict[int, list[dict[str, Any]]] = {}
    for staleness in (0, 1):
        check = f"staleness {staleness}"
        left = limit - (time.perf_counter() - t_start) - 5.0
        run_dir = root / f"s{staleness}"
        args = tiny_args(world, run_dir, *extra, "--max-staleness", str(staleness))
        # its own session: on a timeout the whole group goes (vLLM's engine processes included,
        # which would otherwise keep GPU memory from the next run)
        p = subprocess.Popen(
            [sys.executable, "-m", "tcopd", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        try:
            _, stderr = p.communicate(timeout=max(left, 1.0))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            rec.row(check, "timeout", f"no exit within {left:.0f} s", "")
            continue
        if p.returncode != 0:
            last = (stderr.strip().splitlines() or ["(no output)"])[-1][:300]
            rec.row(check, "failed", f"exit {p.returncode}", last)
            continue
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        runs[staleness] = rows
        _run_row(rec, check, rows, staleness)
    _overlap_rows(rec, runs)


def _mean_se(xs: list[float]) -> tuple[float, float]:
    m = statistics.fmean(xs)
    return m, (statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan"))


def _run_row(rec, check: str, rows: list[dict[str, Any]], staleness: int) -> None:
    body = rows[1:] or rows
    step, se = _mean_se([r["time_step_s"] for r in body])
    phases = {p: statistics.fmean(r[f"time_{p}_s"] for r in body) for p in _PHASES}
    seen = [r["staleness"] for r in rows]
    want = [0] + [staleness] * (len(rows) - 1)
    ok = seen == want
    rec.row(
        check,
        "ok" if ok else "failed",
        f"step {step:.2f} ± {se:.2f} s over steps 2–{len(rows)}",
        ", ".join(f"{p} {v:.2f}" for p, v in phases.items()) + f"; staleness {seen}",
        step_s=step,
        step_se=se,
        staleness=seen,
        **{f"{p}_s": v for p, v in phases.items()},
    )


_PHASES = ("rollout", "scoring", "update", "sync", "trainer_idle", "engine_idle")


def _overlap_rows(rec, runs: dict[int, list[dict[str, Any]]]) -> None:
    if 0 not in runs or 1 not in runs:
        for check in ("overlap", "IS weights"):
            rec.row(check, "skipped", "a run did not finish", "see the rows above")
        return
    a = [math.log(r["time_step_s"]) for r in runs[0][1:] or runs[0]]
    b = [math.log(r["time_step_s"]) for r in runs[1][1:] or runs[1]]
    diff = statistics.fmean(a) - statistics.fmean(b)
    se = math.sqrt(
        (statistics.variance(a) / len(a) if len(a) > 1 else 0.0)
        + (statistics.variance(b) / len(b) if len(b) > 1 else 0.0)
    )
    ideal = statistics.fmean(
        max(r["time_rollout_s"], r["time_scoring_s"] + r["time_update_s"]) + r["time_sync_s"]
        for r in runs[0][1:] or runs[0]
    )
    sync0 = statistics.fmean(r["time_step_s"] for r in runs[0][1:] or runs[0])
    lo, hi = math.exp(diff - 1.96 * se), math.exp(diff + 1.96 * se)
    rec.row(
        "overlap",
        "ok",
        f"speed-up {math.exp(diff):.2f}× [{lo:.2f}, {hi:.2f}] (staleness 0 / 1 step time)",
        f"ideal for staleness 0's phases: {sync0 / ideal:.2f}× ({sync0:.2f} → {ideal:.2f} s)",
        speedup=math.exp(diff),
        lo=lo,
        hi=hi,
        ideal_speedup=sync0 / ideal,
    )
    stale = runs[1][1:]
    if not stale or stale[0].get("is_weight_mean") is None:
        rec.row("IS weights", "skipped", "no IS weight (the engine gave no log-probs)", "")
        return
    keys = ("is_weight_mean", "is_weight_min", "is_weight_capped_fraction", "is_weight_ess")
    means = {k: statistics.fmean(r[k] for r in stale) for k in keys}
    kl = statistics.fmean(r["kl_sampler_old"] for r in stale)
    rec.row(
        "IS weights",
        "ok",
        f"mean {means['is_weight_mean']:.3f}, min {min(r['is_weight_min'] for r in stale):.3f}, "
        f"ESS {means['is_weight_ess']:.3f}",
        f"capped {means['is_weight_capped_fraction']:.4f}; KL(μ ‖ π_old) {kl:.2e}; "
        f"first batch max |w − 1| {abs(runs[1][0]['is_weight_max'] - 1):.1e}",
        **means,
        kl_sampler_old=kl,
    )

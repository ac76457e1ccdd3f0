"""Benchmark: the dense TC-OPD loss, naive full logits vs tcopd.core.dense (forward + backward).

    naive:  (T, V) log-softmax of all K + 2 models (student, K teachers, π_ref) at once, then
            log p* = log_softmax(lsm_ref + (1/β) Σ_k w_k (lsm_k − lsm_ref)) and β·KL(π_θ ‖ p*)
    dense:  dense_kl(...): chunks of positions, one target accumulator, each chunk checkpointed

The models are reduced to what the loss sees: random final hidden states (T, H) and random
output projections (V, H) per model, float32. H defaults to 256 (not a real model's 2,560) to
keep the CPU matmuls short; V is Qwen3's 151,936. K = 2 teachers with w = (0.75, −0.25)
(TC-OPD (1.5, −0.5) with 1/K), β = 1, loss = mean_t kl_t, backward into the student's hidden
states and head weight.

Each variant runs in its own fresh subprocess, so peak memory (CPU: ``ru_maxrss``; CUDA:
``max_memory_allocated``) is that variant's alone, reported as "above inputs" (peak minus the
memory in use once the hidden states and heads exist). Prints time, peak memory, the ratios and
the max |difference| of kl_N and of the gradients between the two.

    .venv/bin/python benchmarks/bench_dense.py                  # CPU, T = 4,096 (naive ≈ 20 GB)
    .venv/bin/python benchmarks/bench_dense.py --T 2048         # fits a 24 GB machine
    .venv/bin/python benchmarks/bench_dense.py --tiny           # seconds: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tcopd.core.dense import Head, dense_kl  # noqa: E402

W_ROW = (0.75, -0.25)
BETA = 1.0


def build(a: argparse.Namespace, device: torch.device):
    """Hidden states and heads of the student (with grad), K teachers and π_ref (without)."""
    g = torch.Generator().manual_seed(0)

    def model():
        weight = torch.randn(a.V, a.H, generator=g) * (2.0 / a.H**0.5)  # logits of spread ~2
        return torch.randn(a.T, a.H, generator=g).to(device), Head(weight.to(device))

    s_h, s_head = model()
    s_h.requires_grad_(True)
    s_head.weight_VH.requires_grad_(True)
    teachers = [model() for _ in range(a.K)]
    r_h, r_head = model()
    w_NK = torch.tensor([W_ROW[: a.K]], device=device).expand(a.T, a.K)
    return s_h, s_head, [t[0] for t in teachers], [t[1] for t in teachers], r_h, r_head, w_NK


def naive_target(t_hs, t_heads, r_h, r_head, w_NK, n):
    """``log p*`` from the (n, V) log-softmax of every frozen model, all materialised at once."""
    with torch.no_grad():
        lsm_r = torch.log_softmax(r_head.logits(r_h[:n]), -1)
        lsm_t = [torch.log_softmax(hd.logits(h[:n]), -1) for h, hd in zip(t_hs, t_heads)]
        contrast = sum(w_NK[:n, k : k + 1] * (lsm_t[k] - lsm_r) for k in range(len(lsm_t)))
        return torch.log_softmax(lsm_r + contrast / BETA, -1)


def naive(s_h, s_head, t_hs, t_heads, r_h, r_head, w_NK, n, chunk):
    lsm_s = torch.log_softmax(s_head.logits(s_h[:n]), -1)
    logp_star = naive_target(t_hs, t_heads, r_h, r_head, w_NK, n)
    return BETA * (lsm_s.exp() * (lsm_s - logp_star)).sum(-1)


def dense(s_h, s_head, t_hs, t_heads, r_h, r_head, w_NK, n, chunk):
    return dense_kl(
        s_h[:n],
        s_head,
        [h[:n] for h in t_hs],
        t_heads,
        r_h[:n],
        r_head,
        w_NK[:n],
        beta=BETA,
        chunk_size=chunk,
    )


def rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def worker(a: argparse.Namespace) -> None:
    torch.set_num_threads(a.threads) if a.threads else None
    device = torch.device(a.device)
    inputs = build(a, device)
    s_h, s_head = inputs[0], inputs[1]
    fn = naive if a.worker == "naive" else dense

    def step(n):
        s_h.grad = s_head.weight_VH.grad = None
        kl = fn(*inputs, n, a.chunk)
        kl.mean().backward()
        return kl.detach()

    step(min(64, a.T))  # warm-up: kernels, allocator
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 1e9
    else:
        base = rss_gb()
    times = []
    for i in range(a.repeats):
        t0 = time.perf_counter()
        kl = step(a.T)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
        if i == 0:  # peak of the first full-size run (later runs are the same size)
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device) / 1e9
            else:
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    torch.save(
        {"kl": kl.cpu(), "grad_h": s_h.grad.cpu(), "grad_w": s_head.weight_VH.grad.cpu()}, a.out
    )
    print(json.dumps({"seconds": min(times), "above_inputs_gb": peak - base, "inputs_gb": base}))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--T", type=int, default=4096, help="positions (default 4096)")
    ap.add_argument("--V", type=int, default=151_936, help="vocabulary (default: Qwen3's 151,936)")
    ap.add_argument("--H", type=int, default=256, help="hidden size of every model (default 256)")
    ap.add_argument("--K", type=int, default=2, choices=[1, 2], help="teachers (default 2)")
    ap.add_argument("--chunk", type=int, default=512, help="dense_kl chunk size (default 512)")
    ap.add_argument(
        "--repeats", type=int, default=2, help="timed runs; the fastest is reported (default 2)"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch threads (default: torch's choice)"
    )
    ap.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (V=1000, T=256)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--worker", choices=["naive", "dense"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.tiny:
        a.V, a.T, a.chunk = 1000, 256, 64
    if a.worker:
        return worker(a)

    results, outputs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("naive", "dense"):
            out = os.path.join(tmp, f"{variant}.pt")
            proc = subprocess.run(
                [sys.executable, __file__, *sys.argv[1:], "--worker", variant, "--out", out],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                sys.exit(f"{variant} run failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
            results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
            outputs[variant] = torch.load(out)
    diffs = {
        name: (outputs["naive"][name].double() - outputs["dense"][name].double()).abs().max().item()
        for name in ("kl", "grad_h", "grad_w")
    }
    n, d = results["naive"], results["dense"]
    shape = f"T={a.T:,} V={a.V:,} H={a.H} K={a.K} teachers + π_ref, float32 {a.device}"
    lines = [
        f"dense TC-OPD loss forward + backward, {shape}, best of {a.repeats}, inputs {n['inputs_gb']:.2f} GB resident",
        "",
        "| variant | time (s) | peak memory above inputs (GB) |",
        "|---|---:|---:|",
        f"| naive: (T, V) log-softmax of all {a.K + 2} models, then the KL | {n['seconds']:.2f} | {n['above_inputs_gb']:.2f} |",
        f"| tcopd.core.dense.dense_kl (chunk {a.chunk}, checkpointed) | {d['seconds']:.2f} | {d['above_inputs_gb']:.2f} |",
        f"| ratio dense / naive | {d['seconds'] / n['seconds']:.2f}× | {d['above_inputs_gb'] / max(n['above_inputs_gb'], 1e-9):.2f}× |",
        "",
        "max |naive − dense|: " + ", ".join(f"{name} {value:.2e}" for name, value in diffs.items()),
    ]
    print("\n".join(lines))
    if a.json:
        Path(a.json).write_text(
            json.dumps({"args": vars(a), "naive": n, "dense": d, "max_abs_diff": diffs}, indent=2)
        )


if __name__ == "__main__":
    main()

"""Part 4: vLLM rollout, in-place weight update, and a second rollout that reflects it.

A small random Qwen3 (head_dim 32: vLLM's CPU attention needs ≥ 32) and a word-level tokenizer
are written to a temporary directory with the test suite's own builders (tests/helpers_tiny.py).
``VLLMEngine`` rolls out a few prompts greedily; the weights are then perturbed (Gaussian noise
of the weights' own scale), pushed with ``update_weights`` (timed), and the prompts rolled out
again. Passes when the greedy outputs changed and equal transformers' greedy outputs under the
new weights (float32 on both sides, so greedy choices agree exactly).

Then three steps of ``tcopd train --engine vllm`` (the CLI, in its own process) on the test
suite's tiny world in float32: the engine beside DeepSpeed, weights pushed after every update,
sleep mode on CUDA. Passes when the run finishes and the truncated IS weights (π_old over vLLM's
own sampling log-probs) sit within 1e-2 of 1; the note gives the sync time and the memory sleep
freed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROWS = ["rollout", "weight update", "rollout after update", "train --engine vllm"]
TEXTS = ("what is 2 + 3 ?", "the answer is", "x = 4", "please reason step by step")


def run(opts: dict[str, Any], rec) -> None:
    try:
        import vllm
    except Exception as e:  # ImportError, or a broken install (CUDA mismatch, ...)
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        for check in ROWS:
            rec.row(check, "skipped", "vLLM is not importable", reason)
        return
    import torch

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # state dicts go straight in
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    sys.path.insert(0, str(Path(opts["repo"]) / "tests"))
    from helpers_tiny import make_tiny_qwen3, make_tokenizer
    from transformers import AutoModelForCausalLM

    from tcopd.runtime.generation.rollout import HFEngine, SamplingParams
    from tcopd.runtime.generation.vllm_engine import VLLMEngine

    rec.set_info(vllm=getattr(vllm, "__version__", "?"), device="cuda" if cuda else "cpu")
    root = Path(tempfile.mkdtemp(prefix="gpu-check-vllm-"))
    path = make_tiny_qwen3(
        root, make_tokenizer(root), seed=1, head_dim=32, max_position_embeddings=256
    )
    t0 = time.perf_counter()
    engine = VLLMEngine(
        path,
        dtype="float32",
        enforce_eager=True,
        max_model_len=256,
        gpu_memory_utilization=0.3 if cuda else 0.5,
    )
    start_s = time.perf_counter() - t0
    tok = engine.tokenizer
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    sampling = SamplingParams(n=1, temperature=0.0, max_new_tokens=16)
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()

    def greedy(eng) -> list[list[int]]:
        return [c.response_ids for c in eng.generate(prompts, sampling)]

    t0 = time.perf_counter()
    first = greedy(engine)
    gen_s = time.perf_counter() - t0
    same = sum(a == b for a, b in zip(first, greedy(HFEngine(hf, tok, device="cpu")), strict=True))
    rec.row(
        "rollout",
        "ok" if same == len(prompts) else "failed",
        f"{len(prompts)} prompts × {sampling.max_new_tokens} tokens in {gen_s:.2f} s",
        f"equals HF greedy on {same}/{len(prompts)}; engine start {start_s:.1f} s",
        seconds=gen_s,
        start_s=start_s,
    )

    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # parameters() lists a tied embedding once: the tie is kept
        for p in hf.parameters():
            p.add_(torch.randn(p.shape, generator=g) * p.float().std().clamp(min=1e-3))
    update_s = engine.update_weights(hf.state_dict())
    rec.row(
        "weight update",
        "ok",
        f"{update_s:.3f} s",
        "in place (reload_weights), float32 state dict",
        seconds=update_s,
    )

    second = greedy(engine)
    expected = greedy(HFEngine(hf, tok, device="cpu"))
    changed = sum(a != b for a, b in zip(first, second, strict=True))
    match = sum(a == b for a, b in zip(second, expected, strict=True))
    ok = changed > 0 and match == len(prompts)
    rec.row(
        "rollout after update",
        "ok" if ok else "failed",
        f"changed on {changed}/{len(prompts)}, equals HF greedy (new weights) on {match}/{len(prompts)}",
        "",
        changed=changed,
        matches=match,
    )
    # Stop this engine before the training starts its own: an idle in-process engine keeps its
    # memory (GPU) and its CPU threads (vLLM's CPU backend polls), which slowed the training ~3x.
    engine.close()
    del engine
    _train_row(rec, root, cuda)


def _train_row(rec, root: Path, cuda: bool) -> None:
    from train_fixtures import make_world, tiny_args

    world = make_world(root / "train", n_prompts=8, head_dim=32, max_position_embeddings=256)
    out = root / "train-run"
    device = ["--device", "cuda"] if cuda else []
    args = tiny_args(world, out, "--engine", "vllm", "--steps", "3", "--dtype", "float32", *device)
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "tcopd", *args], capture_output=True, text=True, env=env
    )
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
        rec.row("train --engine vllm", "failed", f"exit {p.returncode}", last, seconds=seconds)
        return
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    dev = max(abs(r["is_weight_mean"] - 1) for r in rows)
    peak = max(r["is_weight_max"] for r in rows)
    sync = sum(r["time_sync_s"] for r in rows) / len(rows)
    freed = [r.get("rollout_sleep_freed_gb") for r in rows]
    rec.row(
        "train --engine vllm",
        "ok" if len(rows) == 3 and dev < 1e-2 else "failed",
        f"{len(rows)} steps in {seconds:.1f} s; max |is_weight_mean − 1| {dev:.2e}, is_weight_max {peak:.4f}",
        f"sync {sync:.3f} s/step; sleep freed {freed[-1]} GB",
        seconds=seconds,
        is_weight_dev=dev,
        is_weight_max=peak,
        sync_s=sync,
        sleep_freed_gb=freed[-1],
    )

"""Part 4: vLLM rollout, in-place weight update, and a second rollout that reflects it.

A small random Qwen3 (head_dim 32: vLLM's CPU attention needs ≥ 32) and a word-level tokenizer
are written to a temporary directory with the test suite's own builders (tests/helpers_tiny.py).
``VLLMEngine`` rolls out a few prompts greedily; the weights are then perturbed (Gaussian noise
of the weights' own scale), pushed with ``update_weights`` (timed), and the prompts rolled out
again. Passes when the greedy outputs changed and equal transformers' greedy outputs under the
new weights (float32 on both sides, so greedy choices agree exactly).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROWS = ["rollout", "weight update", "rollout after update"]
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

    from tcopd.runtime.rollout import HFEngine, SamplingParams
    from tcopd.runtime.vllm_engine import VLLMEngine

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

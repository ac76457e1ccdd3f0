"""Part 2: the scorer against the plain-logits path, at Qwen3-4B's shape on one 16,384-token response.

The two paths are those of ``benchmarks/bench_scorer.py``:

    plain:  model(ids).logits → log_softmax (float32) → gather   (materialises L × V logits)
    scorer: Scorer({"m": model}).score(prompt, response)          (hidden states, 512-token chunks)

but measured in one process on one model: building a 4 B model once instead of once per path
saves time in the GPU window, and CUDA's peak counter (reset before each path) isolates each
path's memory without separate processes. (bench_scorer.py builds its model with
``head_dim = hidden / heads``, which is 80 at this shape, not Qwen3-4B's 128.) The plain path runs
last, so that its out-of-memory error, if any, is the reported result and nothing else is lost.

Then a realistic batch of mixed lengths goes through the same scorer with the trainer's scoring
token budget: throughput, and the fraction of processed tokens that are padding.
"""

from __future__ import annotations

import random
import time
from typing import Any

from gpu_check.common import device_and_dtype, fmt_gb, free_cuda, gb, is_oom

ROWS = [
    "scorer",
    "plain logits",
    "scorer / plain",
    "max |Δ logp| scorer vs plain",
    "mixed-length batch",
]


def mixed_lengths(n: int, median: int, lo: int, hi: int, seed: int = 0) -> list[int]:
    """Log-normal response lengths (σ = 0.8) clipped to ``[lo, hi]``: long-tailed, like reasoning traces."""
    rng = random.Random(seed)
    return [max(lo, min(hi, int(rng.lognormvariate(0.0, 0.8) * median))) for _ in range(n)]


def _measure(fn, device, repeat: int) -> dict[str, Any]:
    import torch

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    return {
        "seconds": min(times),  # the first run also pays one-off kernel set-up for the new shapes
        "peak_gb": gb(peak) if cuda else None,
        "above_model_gb": gb(peak - base) if cuda else None,
        "logp": out,
    }


def run(opts: dict[str, Any], rec) -> None:
    import torch

    from gpu_check.shapes import build_model, qwen3_config
    from tcopd.core.batching import padding_fraction, plan_padded
    from tcopd.pipelines.train.config import TrainConfig
    from tcopd.runtime.scoring.scorer import Scorer

    tiny = bool(opts.get("tiny"))
    device, dtype = device_and_dtype(opts)
    tokens = int(opts.get("tokens") or (512 if tiny else 16384))
    prompt_len, repeat, chunk = (16, 1, 128) if tiny else (64, 2, 512)
    config = qwen3_config(tiny)
    model = build_model(config, device, dtype)
    model_gb = gb(torch.cuda.memory_allocated(device)) if device.type == "cuda" else None
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, config.vocab_size, (prompt_len,), generator=g).tolist()
    response = torch.randint(0, config.vocab_size, (tokens,), generator=g).tolist()
    shape = (
        f"{tokens:,}-token response, {str(dtype).removeprefix('torch.')}, V={config.vocab_size:,}"
    )
    rec.set_info(
        device=str(device),
        dtype=str(dtype),
        tokens=tokens,
        prompt_tokens=prompt_len,
        model_gb=model_gb,
        chunk=chunk,
        attn=getattr(config, "_attn_implementation", None),
    )

    scorer = Scorer({"m": model}, device=device, token_budget=prompt_len + tokens, chunk_size=chunk)

    def chunked(p=prompt, r=response):
        return scorer.score([p], [r]).logprobs["m"][0]

    def plain(p=prompt, r=response):
        ids = torch.tensor([p + r], device=device)
        logits = model(input_ids=ids, use_cache=False).logits
        lsm = torch.log_softmax(logits.float(), dim=-1)
        target = torch.tensor(r, device=device)[:, None]
        return lsm[0, len(p) - 1 : -1].gather(-1, target)[:, 0].cpu()

    with torch.inference_mode():
        chunked(prompt[:8], response[:8])
        plain(prompt[:8], response[:8])  # warm-up: kernels, allocator
        s = _measure(chunked, device, repeat)
        rec.row(
            "scorer",
            "ok",
            f"{tokens / s['seconds']:,.0f} tok/s, peak {fmt_gb(s['peak_gb'])}",
            f"{shape}, chunk {chunk}, best of {repeat}"
            + (f", model {model_gb:.1f} GB" if model_gb else ""),
            seconds=s["seconds"],
            tokens_per_s=tokens / s["seconds"],
            peak_gb=s["peak_gb"],
            above_model_gb=s["above_model_gb"],
        )
        _mixed(
            rec,
            scorer,
            config,
            device,
            tiny,
            TrainConfig(out="-").score_token_budget,
            plan_padded,
            padding_fraction,
        )
        try:
            p = _measure(plain, device, repeat)
        except Exception as e:
            if not is_oom(e):
                raise
            free_cuda()
            rec.row(
                "plain logits",
                "oom",
                "out of memory",
                f"{shape}: the L × V logits do not fit ({type(e).__name__})",
            )
            rec.row("scorer / plain", "ok", "plain path OOMs; the scorer fits", "")
            rec.row(
                "max |Δ logp| scorer vs plain",
                "skipped",
                "no plain result",
                "the plain path ran out of memory",
            )
            return
    rec.row(
        "plain logits",
        "ok",
        f"{tokens / p['seconds']:,.0f} tok/s, peak {fmt_gb(p['peak_gb'])}",
        f"{shape}, best of {repeat}",
        seconds=p["seconds"],
        tokens_per_s=tokens / p["seconds"],
        peak_gb=p["peak_gb"],
        above_model_gb=p["above_model_gb"],
    )
    time_ratio = s["seconds"] / p["seconds"]
    if device.type == "cuda":
        mem_ratio = s["above_model_gb"] / max(p["above_model_gb"], 1e-9)
        rec.row(
            "scorer / plain",
            "ok",
            f"time {time_ratio:.2f}×, memory above model {mem_ratio:.2f}×",
            f"above model: scorer {s['above_model_gb']:.2f} GB, plain {p['above_model_gb']:.2f} GB",
            time_ratio=time_ratio,
            memory_ratio=mem_ratio,
        )
    else:
        rec.row(
            "scorer / plain",
            "ok",
            f"time {time_ratio:.2f}×, memory n/a on CPU",
            "",
            time_ratio=time_ratio,
        )
    diff = (s["logp"].double() - p["logp"].double()).abs().max().item()
    status = (
        "ok" if diff == diff and diff < (0.5 if dtype == torch.bfloat16 else 1e-3) else "failed"
    )
    rec.row(
        "max |Δ logp| scorer vs plain",
        status,
        f"{diff:.2e}",
        "bf16 paths round differently" if dtype == torch.bfloat16 else "",
        max_abs_diff=diff,
    )


def _mixed(
    rec, scorer, config, device, tiny: bool, budget: int, plan_padded, padding_fraction
) -> None:
    """Score a batch of mixed lengths with the trainer's token budget; padding and throughput."""
    import torch

    n, median, lo, hi, prompt_len = (16, 96, 8, 480, 16) if tiny else (24, 3000, 256, 16384, 256)
    budget = 1024 if tiny else budget
    lengths = mixed_lengths(n, median, lo, hi)
    g = torch.Generator().manual_seed(2)
    prompts = [
        torch.randint(0, config.vocab_size, (prompt_len,), generator=g).tolist() for _ in lengths
    ]
    responses = [torch.randint(0, config.vocab_size, (k,), generator=g).tolist() for k in lengths]
    scorer.token_budget = budget
    result = scorer.score(prompts, responses)
    st = result.stats
    planned = padding_fraction(
        [prompt_len + k for k in lengths], plan_padded([prompt_len + k for k in lengths], budget)
    )
    peak = st["peak_mem_gb"].get(str(device)) if device.type == "cuda" else None
    rec.row(
        "mixed-length batch",
        "ok",
        f"{st['tokens_per_s']:,.0f} tok/s, padding {st['padding_fraction']:.1%}, peak {fmt_gb(peak)}",
        f"{n} responses {min(lengths)}–{max(lengths)} tokens (median {sorted(lengths)[n // 2]}), "
        f"budget {budget:,}, {st['micro_batches']} micro-batches; planned padding {planned:.1%}",
        tokens_per_s=st["tokens_per_s"],
        padding_fraction=st["padding_fraction"],
        planned_padding=planned,
        micro_batches=st["micro_batches"],
        lengths=lengths,
        peak_gb=peak,
    )

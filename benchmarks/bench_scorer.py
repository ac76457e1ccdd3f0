"""Benchmark: the plain HF path vs the tcopd scorer on one long response (SPEC §6, issue 3).

    plain:  model(ids).logits → log_softmax → gather          (materialises L × V logits)
    scorer: Scorer({"m": model}).score(prompt, response)      (hidden states, then 512-token chunks)

Each path runs in its own fresh subprocess so that peak process memory (CPU: ``ru_maxrss``; CUDA:
``max_memory_allocated``) is measured for that path alone, as "above the model" (peak minus the
memory in use once the model is built). The model is a random Qwen3 with the real vocabulary
(V = 151,936) by default. Prints a table with time, tokens/s, peak memory, the ratios, and the
max |difference| between the two paths' log-probs.

    .venv/bin/python benchmarks/bench_scorer.py                      # CPU, 4,096-token response
    .venv/bin/python benchmarks/bench_scorer.py --tiny               # seconds: a smoke run
    python benchmarks/bench_scorer.py --device cuda --dtype bfloat16 --tokens 16384 \\
        --layers 36 --hidden 2560 --heads 32 --kv-heads 8 --intermediate 9728   # Qwen3-4B shape
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


def build_model(a: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=a.vocab,
        hidden_size=a.hidden,
        intermediate_size=a.intermediate or 3 * a.hidden,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        num_key_value_heads=a.kv_heads or a.heads,
        head_dim=a.hidden // a.heads,
        max_position_embeddings=a.prompt + a.tokens + 8,
        tie_word_embeddings=True,  # as Qwen3-4B
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(config).to(getattr(torch, a.dtype))
    return model.eval()


def rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def worker(a: argparse.Namespace) -> None:
    from tcopd.runtime.scoring.scorer import Scorer

    torch.set_num_threads(a.threads) if a.threads else None
    device = torch.device(a.device)
    model = build_model(a, device)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, a.vocab, (a.prompt,), generator=g).tolist()
    response = torch.randint(0, a.vocab, (a.tokens,), generator=g).tolist()

    def plain(p, r):
        ids = torch.tensor([p + r], device=device)
        logits = model(input_ids=ids).logits
        lsm = torch.log_softmax(logits.float(), dim=-1)
        return (
            lsm[0, len(p) - 1 : -1].gather(-1, torch.tensor(r, device=device)[:, None])[:, 0].cpu()
        )

    scorer = Scorer(
        {"m": model}, device=device, token_budget=a.prompt + a.tokens, chunk_size=a.chunk
    )

    def chunked(p, r):
        return scorer.score([p], [r]).logprobs["m"][0]

    fn = plain if a.worker == "plain" else chunked
    with torch.inference_mode():
        fn(prompt[:8], response[:8])  # warm-up: kernels, allocator
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device) / 1e9
        else:
            base = rss_gb()
        times = []
        for i in range(a.repeat):
            t0 = time.perf_counter()
            logp = fn(prompt, response)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
            if i == 0:  # peak of the first full-size run (later runs are the same size)
                if device.type == "cuda":
                    peak = torch.cuda.max_memory_allocated(device) / 1e9
                else:
                    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
        seconds = min(times)  # the first run also pays one-off kernel set-up for the new shapes
    torch.save(logp, a.out)
    print(json.dumps({"seconds": seconds, "above_model_gb": peak - base, "model_gb": base}))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tokens", type=int, default=4096, help="response tokens (default 4096)")
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens (default 64)")
    ap.add_argument(
        "--vocab", type=int, default=151_936, help="vocabulary (default: Qwen3's 151,936)"
    )
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=None)
    ap.add_argument("--intermediate", type=int, default=None)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--chunk", type=int, default=512, help="scorer chunk size (default 512)")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch threads (default: torch's choice)"
    )
    ap.add_argument(
        "--repeat", type=int, default=3, help="timed runs; the fastest is reported (default 3)"
    )
    ap.add_argument(
        "--tiny", action="store_true", help="a seconds-long smoke run (V=1000, 256 tokens)"
    )
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--worker", choices=["plain", "scorer"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.tiny:
        a.vocab, a.tokens, a.prompt, a.hidden, a.heads = 1000, 256, 16, 64, 4
    if a.worker:
        return worker(a)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in ("plain", "scorer"):
            out = os.path.join(tmp, f"{path}.pt")
            argv = sys.argv[1:]
            proc = subprocess.run(
                [sys.executable, __file__, *argv, "--worker", path, "--out", out],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                sys.exit(f"{path} run failed:\n{proc.stderr[-3000:]}")
            results[path] = json.loads(proc.stdout.strip().splitlines()[-1])
            results[path]["logp"] = torch.load(out)
    diff = (
        (results["plain"].pop("logp").double() - results["scorer"].pop("logp").double())
        .abs()
        .max()
        .item()
    )
    for r in results.values():
        r["tokens_per_s"] = a.tokens / r["seconds"]
    p, s = results["plain"], results["scorer"]
    shape = f"V={a.vocab:,} layers={a.layers} hidden={a.hidden} {a.dtype} {a.device}"
    lines = [
        f"response {a.tokens:,} tokens (prompt {a.prompt}), {shape}, best of {a.repeat}, model {p['model_gb']:.2f} GB resident",
        "",
        "| path | time (s) | tokens/s | peak memory above model (GB) |",
        "|---|---:|---:|---:|",
        f"| plain `model(ids).logits` → log_softmax → gather | {p['seconds']:.2f} | {p['tokens_per_s']:,.0f} | {p['above_model_gb']:.2f} |",
        f"| tcopd scorer (chunk {a.chunk}) | {s['seconds']:.2f} | {s['tokens_per_s']:,.0f} | {s['above_model_gb']:.2f} |",
        f"| ratio scorer / plain | {s['seconds'] / p['seconds']:.2f}× | | {s['above_model_gb'] / max(p['above_model_gb'], 1e-9):.2f}× |",
        "",
        f"max |logp_plain − logp_scorer| = {diff:.2e}",
    ]
    print("\n".join(lines))
    if a.json:
        Path(a.json).write_text(
            json.dumps({"args": vars(a), "plain": p, "scorer": s, "max_abs_diff": diff}, indent=2)
        )


if __name__ == "__main__":
    main()

"""Throughput of a served teacher's top k over HTTP (the dense loss with served teachers).

A real vLLM server (CPU build) serves SmolLM2-135M-Instruct (V = 49,152; ``tcopd prepare
smollm2``) with ``--max-logprobs -1``. The same rows (toy-math prompts and their reference
solutions, tokenized by SmolLM2) are scored with ``prompt_logprobs = k`` for each k
(``ServedTeacher.score_top_k``; k = 0 is the sampled loss's plain log-prob scoring), best of
``--repeats``: seconds, scored positions per second, and bytes received per position (the JSON
answer's size). Whole rows (k = -1: 49,152 entries per position) are measured on
``--rows-full`` rows only. Beside them, the same teacher local: its log-probs (``Scorer.score``,
the sampled loss) and its hidden states (``Scorer.hidden_states``, the local dense loss).

No other work may run: vLLM's CPU workers busy-poll both cores while the server is up.

    .venv/bin/python benchmarks/bench_served_topk_http.py --python .vllm-venv/bin/python
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_served import start_server, stop_server  # noqa: E402

from tcopd.runtime.models.loading import load_causal_lm, load_tokenizer  # noqa: E402
from tcopd.runtime.scoring import served  # noqa: E402
from tcopd.runtime.scoring.scorer import Scorer  # noqa: E402
from tcopd.runtime.toy.build import default_root  # noqa: E402

SMOL = Path.home() / ".cache" / "tcopd" / "smollm2"


def rows(tok, n: int) -> tuple[list[list[int]], list[list[int]]]:
    prompts, responses = [], []
    path = default_root() / "data" / "train_math.jsonl"
    for line in path.read_text().splitlines()[:n]:
        row = json.loads(line)
        prompts.append(tok(row["prompt"][0]["content"], add_special_tokens=False)["input_ids"])
        responses.append(tok(row["extra_info"]["solution"], add_special_tokens=False)["input_ids"])
    return prompts, responses


def best(fn, repeats: int):
    out, seconds = None, float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        seconds = min(seconds, time.perf_counter() - t0)
    return seconds, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default=str(Path(".vllm-venv/bin/python").resolve()))
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--rows-full", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ks", default="0,1,4,16,64,256,-1")
    a = ap.parse_args()
    tok = load_tokenizer(str(SMOL))
    V = len(tok)
    prompts, responses = rows(tok, a.rows)
    logs = Path(tempfile.mkdtemp(prefix="bench_topk_", dir="/tmp"))
    results = []
    proc, url = start_server(SMOL, a.python, logs / "server.log", ["--max-logprobs", "-1"])
    try:
        teacher = served.ServedTeacher("t", [url])
        need = max(len(p) + len(r) for p, r in zip(prompts, responses))
        served.connect({"t": teacher}, tok, need, top_k=-1)
        for k in [int(x) for x in a.ks.split(",")]:
            n = a.rows_full if k == -1 else a.rows
            P, R = prompts[:n], responses[:n]
            positions = sum(len(r) for r in R)

            async def call(P=P, R=R, k=k):
                async with served._client(teacher.settings, 4) as client:
                    if k == 0:
                        return await teacher.score(client, P, R)
                    return await teacher.score_top_k(client, P, R, k, V)

            seconds, out = best(lambda: asyncio.run(call()), a.repeats)
            size = sum(t.bytes for t in out) if k != 0 else None
            results.append({
                "k": "V" if k == -1 else k, "rows": n, "positions": positions,
                "seconds": round(seconds, 3), "positions_per_s": round(positions / seconds, 1),
                "bytes_per_position": None if size is None else round(size / positions),
            })  # fmt: skip
            print(json.dumps(results[-1]), flush=True)
    finally:
        stop_server(proc)
    model = load_causal_lm(str(SMOL))
    scorer = Scorer({"t": model})
    positions = sum(len(r) for r in responses)
    s, _ = best(lambda: scorer.score(prompts, responses), a.repeats)
    results.append(
        {"local": "log-probs (sampled loss)", "positions_per_s": round(positions / s, 1)}
    )
    s, _ = best(lambda: scorer.hidden_states(prompts, responses, ["t"]), a.repeats)
    results.append(
        {"local": "hidden states (dense loss)", "positions_per_s": round(positions / s, 1)}
    )
    for r in results[-2:]:
        print(json.dumps(r))


if __name__ == "__main__":
    main()

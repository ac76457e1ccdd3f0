"""Benchmark: a served teacher (vLLM's OpenAI server) vs the same teacher local (issue 15).

1. Scoring tokens/s of the toy expert on the same rows: the local :class:`Scorer` (fp32, this
   process's device) and the served path (:mod:`tcopd.runtime.scoring.served`, one vLLM server), best of
   ``--repeats``; and the max / mean |served − local| log-prob over the rows.
2. The step-time share of scoring in a short ``tcopd train --toy`` run with the anti-expert
   served (``time_scoring_s / time_step_s`` from metrics.jsonl, steps after the first), and the
   same run with the anti-expert local, for comparison.

The server is started here (``tcopd serve-teacher`` with ``--python``, the interpreter that has
vLLM) on a free port and stopped at the end, unless ``--url`` names a running one (it must
serve the toy expert for part 1; part 2 then needs ``--anti-url``).

    .venv/bin/python benchmarks/bench_served.py --python .vllm-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tcopd.runtime.models.loading import load_causal_lm, load_tokenizer  # noqa: E402
from tcopd.runtime.scoring import served  # noqa: E402
from tcopd.runtime.scoring.scorer import Scorer  # noqa: E402
from tcopd.runtime.toy.build import default_root  # noqa: E402

TOY = default_root()  # the shipped toy world ($TCOPD_TOY_DIR honoured)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    model: Path, python: str, log: Path, extra: list[str] | None = None
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "tcopd", "serve-teacher", str(model), "--port", str(port),
           "--host", "127.0.0.1", "--dtype", "float32", "--python", python, "--enforce-eager",
           *(extra or [])]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_TARGET_DEVICE": "cpu"}
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    served.wait_until_ready(url, proc, timeout_s=600)
    return proc, url


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def toy_rows(tok, n: int) -> tuple[list[list[int]], list[list[int]]]:
    """The first ``n`` toy-math prompts and their reference solutions, as token ids."""
    prompts, responses = [], []
    for line in (TOY / "data" / "train_math.jsonl").read_text().splitlines()[:n]:
        row = json.loads(line)
        prompts.append(tok(row["prompt"][0]["content"], add_special_tokens=False)["input_ids"])
        responses.append(tok(row["extra_info"]["solution"], add_special_tokens=False)["input_ids"])
    return prompts, responses


def best_rate(fn, tokens: int, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return tokens / best, out


def part1(url: str, rows: int, repeats: int) -> dict:
    tok = load_tokenizer(str(TOY / "student"))
    prompts, responses = toy_rows(tok, rows)
    n = sum(len(r) for r in responses)
    teacher = served.ServedTeacher("expert", [url])
    served.connect(
        {"expert": teacher}, tok, max(len(p) + len(r) for p, r in zip(prompts, responses))
    )
    scorer = Scorer({"expert": load_causal_lm(str(TOY / "expert"))})
    local_rate, local = best_rate(
        lambda: scorer.score(prompts, responses).logprobs["expert"], n, repeats
    )
    served_rate, remote = best_rate(
        lambda: served.score_all({"expert": teacher}, prompts, responses)["expert"], n, repeats
    )
    d = torch.cat([(a - b).abs() for a, b in zip(local, remote, strict=True)])
    return {
        "rows": rows, "response_tokens": n, "local_tokens_per_s": local_rate,
        "served_tokens_per_s": served_rate, "max_abs_diff": float(d.max()),
        "mean_abs_diff": float(d.mean()),
    }  # fmt: skip


def part2(anti: str, steps: int) -> dict:
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        run = Path(d) / "run"
        cmd = [sys.executable, "-m", "tcopd", "train", "--toy", "--student", str(TOY / "student"),
               "--expert", str(TOY / "expert"), "--anti-expert", anti, "--lambdas", "1.5,-0.5",
               "--data", str(TOY / "data" / "train_math.parquet"), "--max-prompt-tokens", "150",
               "--steps", str(steps), "--no-grade", "--out", str(run)]  # fmt: skip
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            raise SystemExit(f"train failed:\n{p.stderr[-3000:]}")
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][1:]
    scoring = sum(r["time_scoring_s"] for r in rows)
    step = sum(r["time_step_s"] for r in rows)
    return {"steps_measured": len(rows), "scoring_s": scoring / len(rows),
            "step_s": step / len(rows), "scoring_share": scoring / step}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default=str(Path(".vllm-venv/bin/python").resolve()),
                    help="interpreter with vLLM (starts the servers)")  # fmt: skip
    ap.add_argument("--url", help="a running server of the toy expert (part 1)")
    ap.add_argument("--anti-url", help="a running server of the toy anti-expert (part 2)")
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    logs = Path(tempfile.mkdtemp(prefix="bench_served_", dir="/tmp"))
    result = {"cpu_threads": torch.get_num_threads()}
    proc = None
    try:
        url = a.url
        if url is None:
            proc, url = start_server(TOY / "expert", a.python, logs / "expert.log")
        result["scoring"] = part1(url, a.rows, a.repeats)
        if proc is not None:
            stop_server(proc)  # one server at a time
            proc = None
        anti = a.anti_url
        if anti is None:
            proc, anti = start_server(TOY / "anti_expert", a.python, logs / "anti.log")
        result["train_served"] = part2(anti, a.steps)
        result["train_local"] = part2(str(TOY / "anti_expert"), a.steps)
    finally:
        if proc is not None:
            stop_server(proc)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

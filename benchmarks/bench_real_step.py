"""Benchmark: one OPD training step on a real model, tcopd vs TRL 1.16; and the scorer at V = 49,152.

The model is SmolLM2-135M-Instruct (``tcopd prepare smollm2``: LlamaForCausalLM, 30 layers,
V = 49,152, tied embeddings), student and teacher (a second copy of the same weights), fp32, CPU.

Part 1, a training step (each library in its own subprocess, ``repeats`` + 1 steps, the first a
warm-up that is not counted):

    tcopd  ``tcopd train --student M --expert M --lambdas 1 --loss sampled`` (OPD: the sampled
           per-token estimator), HF engine, ZeRO 0, ``--ppo-epochs 1 --mini-batches 1`` (one
           optimizer update per batch of rollouts, on-policy: π_old comes from the update's own
           forward), ``--no-grade``, ``--no-truncated-is``; times from metrics.jsonl
           (``time_step_s`` and the rollout / scoring / update phases).
    TRL    ``trl.DistillationTrainer`` (benchmarks/trl_real_worker.py in .trl-venv): on-policy,
           one optimizer step per generation batch (the whole batch in one micro-batch), timed
           by a callback from ``on_step_begin`` to ``on_step_end``; phases: generation, teacher
           backbone forward, and the rest (student forward, loss, backward, optimizer).

What is matched: the model and its teacher copy, the prompts (``--prompts`` toy-math questions
rendered with the chat template; TRL gets the messages and applies the same template, and the
worker checks every row's token ids against tcopd's), ``--responses`` rollouts per prompt in one
generation batch, sampling (temperature 1, top-k off, top-p 1, no penalty, ``--max-new-tokens``),
one optimizer update per step (AdamW, constant lr 1e-6, no weight decay, clip 1.0), fp32, no
activation checkpointing, no dropout, no grading, no checkpoint inside the timed steps.

What is not matched: the loss. TRL 1.16's DistillationTrainer only has the generalised JSD over
the whole vocabulary (``beta=1``: the reverse KL(π_θ ‖ teacher) at every sampled position,
teacher and student logits projected chunk by chunk); tcopd's OPD uses the sampled estimator
(reward log teacher − log π_old of the sampled token, PPO-clipped), which needs only the sampled
token's log-prob from each model. ``--tcopd-loss dense`` runs tcopd's full-vocabulary β·KL
instead, the closer match to TRL's work. Also the samples themselves (each library seeds its
own sampler) and the engine internals (tcopd samples with the training module; both use
transformers ``generate`` with a KV cache). Micro-batching: tcopd's default token budget
(16,384) holds the whole batch, and TRL gets the whole generation batch as one micro-batch;
TRL's own default would be 8 (``--trl-micro-batch 8``), tcopd's is ``--tcopd-args
"--train-token-budget N"``: both change the peak memory, so say which pairing a number uses.

Same number of tokens: by default (``--fixed-length``) both sides get a view of the model
directory whose end-of-sequence token is remapped to ``<empty_output>`` (id 16, which the chat
model does not emit), so every response runs to ``--max-new-tokens`` and both libraries do the
same work; ``--natural-eos`` keeps ``<|im_end|>``, and responses then end early by chance. The
mean response length of each side is reported either way, with the time per generated token.

Peak memory: the largest resident set of the subprocess (``ru_maxrss`` from ``os.wait4``),
model loading and (tcopd) the final checkpoint included; tcopd's own per-step ``peak_mem_gb``
(ru_maxrss at each step's end) and the TRL worker's RSS after loading are reported beside it.

Part 2, the scorer (each path in its own subprocess): the ``prompts × responses`` chat prompts,
each followed by ``--max-new-tokens`` random response tokens, scored by
``tcopd.runtime.scoring.scorer.Scorer`` (chunked log-probs, no T×V logits) and by the plain transformers
path (one right-padded batch: ``model(ids).logits`` → log_softmax → gather), under
``torch.inference_mode``; median of ``--repeats`` after a warm-up; peak process memory and the
peak above the loaded model; the max |Δ| between the two.

    .venv/bin/python benchmarks/bench_vs_trl.py --setup        # .trl-venv, once
    .venv/bin/python benchmarks/bench_real_step.py --out runs/bench-real   # full size
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_real_step.py --prompts 2 --responses 2 \\
        --max-new-tokens 8 --repeats 1 --out /tmp/brs                  # a smoke run

Results: the printed table and ``OUT/results.json``; each part's record is ``OUT/<part>.json``
(``--parts`` reruns some parts and reuses the others' records).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRL_PYTHON = ROOT / ".trl-venv" / "bin" / "python"
TRL_WORKER = ROOT / "benchmarks" / "trl_real_worker.py"
DEFAULT_MODEL = Path.home() / ".cache" / "tcopd" / "smollm2"
FAKE_EOS = "<empty_output>"  # a special token the chat model does not emit: no early stop
PARTS = ("tcopd", "trl", "scorer")
ENV = {
    "DS_BUILD_OPS": "0",  # as the Makefile: no DeepSpeed C++ builds
    "TORCH_EXTENSIONS_DIR": str(Path.home() / ".cache" / "torch_extensions"),
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
}


# ------------------------------------------------------------------------------------- inputs


def toy_questions(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` distinct toy-math word problems (as tests/real_model.py's) with their answers."""
    rng = random.Random(seed)
    names = ["Ivy", "Amy", "Tom", "Zoe", "Ben", "Max", "Eva", "Leo", "Mia", "Sam", "Ada", "Kai"]
    items = ["books", "cards", "apples", "stamps", "coins", "shells", "pens", "marbles"]
    gains, losses = ["gets", "buys", "finds", "picks up"], ["drops", "gives away", "loses"]
    out: dict[str, str] = {}
    while len(out) < n:
        who, what, total = rng.choice(names), rng.choice(items), rng.randint(10, 90)
        parts = [f"{who} has {total} {what}."]
        for k in range(rng.randint(1, 2)):
            m = rng.randint(1, 9)
            gain = rng.random() < 0.5
            verb = rng.choice(gains if gain else losses)
            parts.append(f"{'Then ' if k else ''}{who} {verb} {m}.")
            total += m if gain else -m
        parts.append(f"How many {what} does {who} have now?")
        out[" ".join(parts)] = str(total)
    return list(out.items())


def write_data(path: Path, n: int) -> list[list[dict]]:
    """The prepared (verl-style) data file of ``n`` chat prompts; returns their messages."""
    rows = [
        {
            "data_source": "toy-math-chat",
            "prompt": [{"role": "user", "content": q}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": a},
            "extra_info": {"split": "train", "index": i},
            "domain": "math",
        }
        for i, (q, a) in enumerate(toy_questions(n))
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [r["prompt"] for r in rows]


def model_view(model: Path, out: Path, fixed_length: bool) -> Path:
    """``model`` itself, or (fixed length) a directory of links to it whose EOS is ``FAKE_EOS``.

    tcopd stops on the EOS ids of the model config, its generation config and the tokenizer;
    TRL on those of the generation config and the tokenizer: all three are remapped.
    """
    if not fixed_length:
        return model
    view = out / "model-fixed-length"
    shutil.rmtree(view, ignore_errors=True)
    view.mkdir(parents=True)
    tokens = json.loads((model / "tokenizer.json").read_text())["added_tokens"]
    eos_id = next(t["id"] for t in tokens if t["content"] == FAKE_EOS)
    for f in model.iterdir():
        if f.name in ("config.json", "generation_config.json", "tokenizer_config.json"):
            cfg = json.loads(f.read_text())
            key, value = (
                ("eos_token", FAKE_EOS) if f.name.startswith("tok") else ("eos_token_id", eos_id)
            )
            (view / f.name).write_text(json.dumps(cfg | {key: value}, indent=2))
        else:
            (view / f.name).symlink_to(f.resolve())
    return view


def tcopd_prompt_ids(model: Path, data: Path) -> list[list[int]]:
    """Each prompt's token ids exactly as ``tcopd train --template chat`` makes them."""
    from tcopd.pipelines.train.data import load_prompts
    from tcopd.runtime.models.loading import load_tokenizer

    return load_prompts(str(data), load_tokenizer(str(model)), "chat", 4096).ids


# ------------------------------------------------------------------------------- subprocesses


def run_measured(cmd: list[str], log: Path, env: dict[str, str]) -> dict[str, float]:
    """Run ``cmd`` (output to ``log``); its wall seconds and peak RSS (GB, from ``os.wait4``)."""
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **env})
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        sys.exit(f"failed (rc {rc}): {' '.join(cmd)}\n{log.read_text()[-3000:]}")
    return {"wall_s": wall, "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9}


def thread_env(a: argparse.Namespace) -> dict[str, str]:
    """Both sides get the same thread count (``--threads``; 0: the environment's own)."""
    env = dict(ENV)
    if a.threads:
        env |= {"OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads)}
    return env


def timed_steps(steps: list[dict], warmup: int = 1) -> list[dict]:
    """The steps after the warm-up (all of them when there is nothing else)."""
    return steps[warmup:] or steps


def median_of(steps: list[dict], key: str) -> float | None:
    xs = [s[key] for s in steps if s.get(key) is not None]
    return statistics.median(xs) if xs else None


# -------------------------------------------------------------------------------------- tcopd


def tcopd_command(a: argparse.Namespace, model: Path, data: Path, run_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "tcopd", "train", "--student", str(model)]
    cmd += ["--expert", str(model), "--lambdas", "1", "--data", str(data)]
    cmd += ["--out", str(run_dir), "--template", "chat", "--loss", a.tcopd_loss]
    cmd += ["--steps", str(a.repeats + 1), "--batch-size", str(a.prompts)]
    cmd += ["--samples-per-prompt", str(a.responses)]
    cmd += ["--max-response-tokens", str(a.max_new_tokens)]
    cmd += ["--temperature", "1.0", "--top-p", "1.0", "--lr", str(a.lr), "--grad-clip", "1.0"]
    cmd += ["--weight-decay", "0", "--ppo-epochs", "1", "--mini-batches", "1"]
    cmd += ["--dtype", "float32", "--device", "cpu", "--zero-stage", "0", "--engine", "hf"]
    cmd += ["--no-grade", "--no-truncated-is", "--no-gradient-checkpointing"]
    cmd += ["--save-every", "0", "--keep-checkpoints", "1", "--seed", "0", "--overwrite"]
    return cmd + shlex.split(a.tcopd_args)  # last: a repeated flag overrides the one above


def tcopd_step(row: dict) -> dict:
    """One metrics.jsonl row as this benchmark's step record (phases: tcopd's own timers)."""
    phases = {
        "generation": row["time_rollout_s"],
        "scoring": row["time_scoring_s"],  # the teacher only: on-policy, π_old comes from update
        "update": row["time_update_s"],
    }
    return {
        "step_s": row["time_step_s"],
        **phases,
        "other": row["time_step_s"] - sum(phases.values()),  # advantages, sync, grade wait
        "tokens": row["response_len_mean"] * row["responses"],
        "response_len_mean": row["response_len_mean"],
        "responses": row["responses"],
        "peak_mem_gb": max(row["peak_mem_gb"].values()),
    }


def run_tcopd(a: argparse.Namespace, model: Path, data: Path, out: Path) -> dict:
    """``tcopd train`` for ``repeats`` + 1 steps; per-step times from its metrics.jsonl."""
    run_dir = out / "tcopd-run"
    cmd = tcopd_command(a, model, data, run_dir)
    proc = run_measured(cmd, out / "tcopd.log", thread_env(a))
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    steps = [tcopd_step(json.loads(x)) for x in lines]
    for d in run_dir.iterdir():  # the final checkpoint (model + optimizer): not needed here
        if d.is_dir() and d.name.startswith("checkpoint"):
            shutil.rmtree(d)
    extra = {"per_step_peak_mem_gb": max(s["peak_mem_gb"] for s in steps)}
    return summarize_steps(steps) | proc | extra | {"command": " ".join(cmd)}


# ---------------------------------------------------------------------------------------- TRL


def run_trl(a: argparse.Namespace, model: Path, messages: list, ids: list, out: Path) -> dict:
    """TRL's DistillationTrainer for ``repeats`` + 1 steps in .trl-venv, timed by a callback."""
    rows = [m for m in messages for _ in range(a.responses)]  # each prompt `responses` times
    row_ids = [i for i in ids for _ in range(a.responses)]
    spec = {
        "model": str(model),
        "messages": rows,
        "prompt_ids": row_ids,
        "steps": a.repeats + 1,
        "generation_batch": len(rows),
        "micro_batch": a.trl_micro_batch or len(rows),
        "lr": a.lr,
        "max_new_tokens": a.max_new_tokens,
        "seed": 0,
        "device": "cpu",
    }
    work = out / "trl-run"
    work.mkdir(parents=True, exist_ok=True)
    (work / "spec.json").write_text(json.dumps(spec))
    cmd = [str(TRL_PYTHON), str(TRL_WORKER), str(work / "spec.json"), str(work / "result.json")]
    proc = run_measured(cmd, out / "trl.log", thread_env(a))
    res = json.loads((work / "result.json").read_text())
    if res["global_step"] != spec["steps"] or res["bad_tokenization"]:
        sys.exit(
            f"TRL ran {res['global_step']} steps, {res['bad_tokenization']} prompts "
            f"tokenised unlike tcopd's (see {work})"
        )
    steps = [
        s | {"tokens": sum(n), "response_len_mean": sum(n) / len(n), "responses": len(n)}
        for s, n in zip(res.pop("steps"), res.pop("lengths"), strict=True)
    ]
    return summarize_steps(steps) | proc | res | {"command": " ".join(cmd)}


def summarize_steps(steps: list[dict]) -> dict:
    """Medians over the timed steps (after the warm-up) of the step time and of each phase."""
    timed = timed_steps(steps)
    not_phases = ("step_s", "tokens", "responses", "response_len_mean", "peak_mem_gb")
    phases = [k for k in steps[0] if k not in not_phases]
    return {
        "step_s": median_of(timed, "step_s"),
        "phases_s": {k: median_of(timed, k) for k in phases},
        "s_per_token": statistics.median(s["step_s"] / s["tokens"] for s in timed),
        "response_len_mean": statistics.mean(s["response_len_mean"] for s in timed),
        "responses": timed[0]["responses"],
        "timed_steps": len(timed),
        "all_steps": steps,
    }


# ------------------------------------------------------------------------------------- scorer


def rss_gb() -> float:
    """This process's resident memory now (GB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def plain_logprobs(model, prompts: list[list[int]], responses: list[list[int]]) -> list:
    """The plain transformers path: one right-padded batch, ``logits`` → log_softmax → gather."""
    import torch

    seqs = [p + r for p, r in zip(prompts, responses, strict=True)]
    B, L = len(seqs), max(len(s) for s in seqs)
    ids_BL = torch.zeros((B, L), dtype=torch.long)
    mask_BL = torch.zeros((B, L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids_BL[i, : len(s)] = torch.tensor(s)
        mask_BL[i, : len(s)] = 1
    logits_BLV = model(input_ids=ids_BL, attention_mask=mask_BL).logits
    logp_BLV = torch.log_softmax(logits_BLV.float(), dim=-1)
    out = []
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        rows_TV = logp_BLV[i, len(p) - 1 : len(p) - 1 + len(r)]  # position t predicts token t + 1
        out.append(rows_TV.gather(-1, torch.tensor(r)[:, None])[:, 0])
    return out


def scorer_worker(a: argparse.Namespace) -> None:
    """One scoring path in this process: times, peak memory, and the log-probs (to ``a.result``)."""
    import torch

    from tcopd.runtime.models.loading import load_causal_lm
    from tcopd.runtime.scoring.scorer import Scorer

    inputs = json.loads(Path(a.inputs).read_text())
    prompts, responses = inputs["prompts"], inputs["responses"]
    model = load_causal_lm(a.model, dtype="float32", device="cpu")
    scorer = Scorer({"m": model}, device="cpu", token_budget=a.score_token_budget, chunk_size=512)
    if a.scorer_worker == "plain":
        fn = lambda p, r: plain_logprobs(model, p, r)  # noqa: E731
    else:
        fn = lambda p, r: scorer.score(p, r).logprobs["m"]  # noqa: E731
    times = []
    with torch.inference_mode():
        fn([p[:4] for p in prompts[:2]], [r[:4] for r in responses[:2]])  # warm-up
        base = rss_gb()
        for _ in range(a.repeats + 1):  # the first full-size run is a warm-up too
            t0 = time.perf_counter()
            logp = fn(prompts, responses)
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    torch.save([x.detach().clone() for x in logp], a.result)
    record = {"times_s": times[1:], "model_rss_gb": base, "above_model_gb": peak - base}
    Path(a.result + ".json").write_text(json.dumps(record))


def run_scorer(a: argparse.Namespace, model: Path, ids: list[list[int]], out: Path) -> dict:
    """Both scoring paths, each in a fresh subprocess; their times, memory and max |Δ|."""
    import torch

    rng = random.Random(1)
    prompts = [p for p in ids for _ in range(a.responses)]
    responses = [[rng.randrange(17, 49152) for _ in range(a.max_new_tokens)] for _ in prompts]
    inputs = out / "scorer-inputs.json"
    inputs.write_text(json.dumps({"prompts": prompts, "responses": responses}))
    res: dict[str, dict] = {}
    for path in ("plain", "scorer"):
        result = out / f"scorer-{path}.pt"
        cmd = [sys.executable, __file__, "--scorer-worker", path, "--inputs", str(inputs)]
        cmd += ["--result", str(result), "--model", str(model), "--repeats", str(a.repeats)]
        cmd += ["--score-token-budget", str(a.score_token_budget)]
        proc = run_measured(cmd, out / f"scorer-{path}.log", thread_env(a))
        record = json.loads(Path(f"{result}.json").read_text())
        res[path] = record | proc | {"time_s": statistics.median(record["times_s"])}
        res[path]["logp"] = torch.load(result)
    diff = max(
        (x.double() - y.double()).abs().max().item()
        for x, y in zip(res["plain"].pop("logp"), res["scorer"].pop("logp"), strict=True)
    )
    shape = {"sequences": len(prompts), "prompt_tokens_mean": statistics.mean(map(len, prompts))}
    return res | {"max_abs_diff": diff, "response_tokens": a.max_new_tokens, **shape}


# ------------------------------------------------------------------------------------- report


def ratio(x: float | None, y: float | None) -> float | None:
    return x / y if x is not None and y else None


def ratios(res: dict) -> dict:
    t, r, s = res.get("tcopd"), res.get("trl"), res.get("scorer")
    out = {}
    if t and r:
        out["step_time_tcopd_over_trl"] = ratio(t["step_s"], r["step_s"])
        out["s_per_token_tcopd_over_trl"] = ratio(t["s_per_token"], r["s_per_token"])
        out["peak_rss_tcopd_over_trl"] = ratio(t["peak_rss_gb"], r["peak_rss_gb"])
    if s:
        out["scorer_time_over_plain"] = ratio(s["scorer"]["time_s"], s["plain"]["time_s"])
        out["scorer_peak_rss_over_plain"] = ratio(
            s["scorer"]["peak_rss_gb"], s["plain"]["peak_rss_gb"]
        )
        out["scorer_above_model_over_plain"] = ratio(
            s["scorer"]["above_model_gb"], s["plain"]["above_model_gb"]
        )
    return out


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def step_table(res: dict) -> list[str]:
    lines = [
        "| library | step s (median) | generation s | teacher s | update s | other s "
        "| mean response len | ms / generated token | peak RSS GB (process) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, teacher, update in (
        ("tcopd", "scoring", "update"),
        ("trl", "teacher_forward", "student_update"),
    ):
        r = res.get(name)
        if not r:
            continue
        ph = r["phases_s"]
        other = ph.get("other")
        lines.append(
            f"| {name} | {fmt(r['step_s'])} | {fmt(ph.get('generation'))} | {fmt(ph.get(teacher))} "
            f"| {fmt(ph.get(update))} | {fmt(other)} | {r['response_len_mean']:.1f} "
            f"| {1e3 * r['s_per_token']:.1f} | {r['peak_rss_gb']:.2f} |"
        )
    return lines


def report(a: argparse.Namespace, res: dict) -> str:
    rat = ratios(res)
    lines = [
        f"one OPD step: {a.prompts} prompts × {a.responses} responses × {a.max_new_tokens} "
        f"tokens ({'fixed length' if a.fixed_length else 'natural EOS'}), fp32 CPU, median of "
        f"{a.repeats} after 1 warm-up; tcopd --loss {a.tcopd_loss} {a.tcopd_args}, TRL reverse "
        f"KL (JSD β=1), TRL micro-batch {a.trl_micro_batch or 'whole batch'}",
        "",
        *step_table(res),
        "",
    ]
    if "step_time_tcopd_over_trl" in rat:
        lines.append(
            f"tcopd / TRL: time per step ×{fmt(rat['step_time_tcopd_over_trl'])}, per generated "
            f"token ×{fmt(rat['s_per_token_tcopd_over_trl'])}, peak RSS "
            f"×{fmt(rat['peak_rss_tcopd_over_trl'])} (goal: ≤ 1.0× time at ≤ 0.5× memory)"
        )
    s = res.get("scorer")
    if s:
        lines += [
            "",
            f"scorer: {s['sequences']} sequences × ({s['prompt_tokens_mean']:.0f} + "
            f"{s['response_tokens']}) tokens, V = 49,152, median of {a.repeats}",
            "",
            "| path | time s | peak RSS GB (process) | peak above model GB |",
            "|---|---:|---:|---:|",
        ]
        for path in ("plain", "scorer"):
            p = s[path]
            lines.append(
                f"| {path} | {p['time_s']:.2f} | {p['peak_rss_gb']:.2f} | {p['above_model_gb']:.2f} |"
            )
        lines.append(
            f"scorer / plain: time ×{fmt(rat['scorer_time_over_plain'])}, peak RSS "
            f"×{fmt(rat['scorer_peak_rss_over_plain'])}, above model "
            f"×{fmt(rat['scorer_above_model_over_plain'])}; max |Δ logp| = {s['max_abs_diff']:.2e}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="HF model directory (SmolLM2)")
    ap.add_argument("--prompts", type=int, default=16, help="prompts per step (default 16)")
    ap.add_argument("--responses", type=int, default=2, help="responses per prompt (default 2)")
    ap.add_argument("--max-new-tokens", type=int, default=128, help="tokens per response")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps / scorer runs (default 3)")
    ap.add_argument("--out", default="runs/bench-real", help="output directory")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated (default all)")
    ap.add_argument(
        "--fixed-length",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="remap EOS so that every response has --max-new-tokens (default on)",
    )
    ap.add_argument(
        "--natural-eos",
        dest="fixed_length",
        action="store_false",
        help="keep the model's EOS (= --no-fixed-length)",
    )
    ap.add_argument("--tcopd-loss", choices=["sampled", "dense"], default="sampled")
    ap.add_argument(
        "--tcopd-args",
        default="",
        help="extra `tcopd train` flags, e.g. '--train-token-budget 2048' (recorded in results)",
    )
    ap.add_argument("--lr", type=float, default=1e-6, help="both sides' lr (default 1e-6)")
    ap.add_argument("--trl-micro-batch", type=int, default=0, help="0: the generation batch")
    ap.add_argument("--score-token-budget", type=int, default=32768, help="scorer micro-batch")
    ap.add_argument("--threads", type=int, default=0, help="OMP threads (0: inherit)")
    ap.add_argument("--scorer-worker", choices=["plain", "scorer"], help=argparse.SUPPRESS)
    ap.add_argument("--inputs", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    return ap.parse_args()


def shape(a: argparse.Namespace) -> dict:
    """The settings a part's record must share with the others to be reused beside them."""
    keys = ("model", "prompts", "responses", "max_new_tokens", "repeats", "fixed_length", "threads")
    return {k: getattr(a, k) for k in keys}


def main() -> None:
    a = parse_args()
    if a.scorer_worker:
        return scorer_worker(a)
    parts = [p for p in a.parts.split(",") if p]
    if set(parts) - set(PARTS):
        sys.exit(f"unknown parts {sorted(set(parts) - set(PARTS))}; choose from {PARTS}")
    if "trl" in parts and not TRL_PYTHON.exists():
        sys.exit("no .trl-venv: run `.venv/bin/python benchmarks/bench_vs_trl.py --setup`")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = model_view(Path(a.model).expanduser(), out, a.fixed_length)
    messages = write_data(out / "prompts.jsonl", a.prompts)
    ids = tcopd_prompt_ids(model, out / "prompts.jsonl")
    res: dict[str, dict] = {}
    for part in PARTS:
        record = out / f"{part}.json"
        if part in parts:
            print(f"{part} …", flush=True)
            if part == "tcopd":
                res[part] = run_tcopd(a, model, out / "prompts.jsonl", out)
            elif part == "trl":
                res[part] = run_trl(a, model, messages, ids, out)
            else:
                res[part] = run_scorer(a, model, ids, out)
            res[part]["shape"] = shape(a)
            record.write_text(json.dumps(res[part], indent=2))
        elif record.is_file():
            res[part] = json.loads(record.read_text())
            if res[part].get("shape") != shape(a):
                sys.exit(f"{record} was measured at another shape: delete it or use another --out")
    print()
    print(report(a, res))
    versions = {k: metadata.version(k) for k in ("torch", "transformers", "deepspeed")}
    results = {"args": vars(a), "versions": versions, "ratios": ratios(res), **res}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out / 'results.json'}")


if __name__ == "__main__":
    main()

"""Benchmark: tcopd's OPD vs Hugging Face TRL's on-policy distillation, toy world, matched settings.

Configurations (``--configs``, default all four):

    tcopd-sampled  tcopd train --toy --lambdas 1 (the paper's per-token estimator, PPO-clipped,
                   steps × mini_batches optimizer steps: 4 updates per batch of rollouts)
    tcopd-dense    the same with --loss dense (β·KL(π_θ ‖ teacher) over the whole vocabulary)
    trl-1upd       trl.DistillationTrainer, one optimizer step per generation batch of
                   batch_size × samples_per_prompt completions: the same rollouts per step as
                   tcopd, a quarter of its optimizer steps
    trl-4upd       trl.DistillationTrainer with 4× the steps on generation batches a quarter the
                   size (40 × 128 → 160 × 32 rollouts at the toy size): tcopd's number of
                   optimizer steps and of rollouts, each step on fresh samples
    student        (optional) the untrained student, evaluated only

What is matched: the student, the math teacher (λ = 1, β = 1: plain OPD, reverse KL to the
teacher), the prompts (tcopd's plain template; TRL's dataset is tcopd's step order,
``step_prompts(n, batch_size, seed, step)`` for each step, every prompt repeated
``samples_per_prompt`` times, shuffling off; the worker checks each generation batch's prompts
and every prompt's token ids against tcopd's), sampling (temperature 1, top-k off, top-p 1, no
min-p or repetition penalty, ``--max-new-tokens``), AdamW (0.9, 0.999, 1e-8) at a constant lr,
no weight decay, gradient clip 1.0, fp32, no activation checkpointing, seed. tcopd runs with
``--save-every 0`` (only the final checkpoint), ``--no-grade`` (TRL grades nothing) and its
paths given explicitly (so no in-training evaluation). What cannot be matched: the random
samples themselves (each library seeds its own sampler), and the update rule: tcopd takes 4
mini-batch steps per batch of rollouts (3 of them off-policy; the sampled estimator
PPO-clipped), while TRL 1.16's DistillationTrainer has no PPO and never reuses a generation
batch (gradient accumulation splits one batch into micro-batches of one optimizer step), so its
only way to 4× the updates is 4× more, smaller batches.

Every final model is evaluated with ``tcopd eval toy --model DIR --n N`` (plain template, the
same sampling settings and ``--max-tokens``, the same eval seed for every model, so each problem
gets the same sampler seed). Times: "wall" is the training subprocess (start-up, model loading
and saving included); "train" is the trainer's own clock (tcopd: the sum of ``time_step_s`` in
metrics.jsonl; TRL: ``trainer.train()`` alone).

Statistics: per configuration, mean@n per seed and the mean over seeds ± its standard error
over the P problems (of each problem's accuracy averaged over seeds). Paired differences (each
config vs tcopd-sampled; tcopd-dense vs the better TRL config): d_p = mean over seeds of
acc_A(s, p) − acc_B(s, p), the mean of d_p ± sd(d_p)/√P and a 95 % t-interval (df P − 1); "A > B"
is claimed only when that interval excludes 0, else "no difference shown". The interval covers
problem and evaluation-sampling noise; training-seed noise only through the seeds run, so the
per-seed differences (and their SE over seeds, with two or more seeds) are printed beside it.

    .venv/bin/python benchmarks/bench_vs_trl.py --setup         # build .trl-venv (TRL 1.16) once
    .venv/bin/python benchmarks/bench_vs_trl.py                 # the full run (or: make bench-trl)
    .venv/bin/python benchmarks/bench_vs_trl.py --steps 2 --batch-size 4 --samples-per-prompt 2 \\
        --eval-limit 10 --seeds 0 --configs tcopd-sampled,trl-1upd    # a smoke run, minutes

A finished run (``OUT/<config>/seed<S>/run.json``) and a finished evaluation are reused when the
command is repeated (``OUT/settings.json`` refuses a repeat with other settings); delete the
directory to redo them. Results: the printed tables and
``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRL_VENV = ROOT / ".trl-venv"
TRL_PYTHON = TRL_VENV / "bin" / "python"
REQUIREMENTS = ROOT / "benchmarks" / "trl_requirements.txt"
WORKER = ROOT / "benchmarks" / "trl_worker.py"
TORCH = "torch==2.13.0"  # installed first and pinned: a bare torch may pull a multi-GB CUDA build
CONFIGS = ("tcopd-sampled", "tcopd-dense", "trl-1upd", "trl-4upd")
TRL_UPDATES = {"trl-1upd": 1, "trl-4upd": 4}  # generation batches per tcopd step
REFERENCE = "tcopd-sampled"
ENV = {
    "DS_BUILD_OPS": "0",  # as the Makefile: no DeepSpeed C++ builds
    "TORCH_EXTENSIONS_DIR": str(Path.home() / ".cache" / "torch_extensions"),
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",  # every model is a local directory
}


# ---------------------------------------------------------------------------------------- set-up


def setup(a: argparse.Namespace) -> None:
    """Create ``.trl-venv``: torch (pinned, first), the transformers of tcopd's venv, then TRL."""
    transformers = f"transformers=={metadata.version('transformers')}"  # the same model code
    pip = [str(TRL_VENV / "bin" / "pip"), "install", "-q"]
    if a.find_links:
        pip += ["--find-links", a.find_links]
    steps = [
        [sys.executable, "-m", "venv", str(TRL_VENV)],
        [*pip, "--upgrade", "pip"],
        [*pip, TORCH],
        [*pip, TORCH, transformers, "-r", str(REQUIREMENTS)],
        [str(TRL_VENV / "bin" / "pip"), "check"],
    ]
    for cmd in steps:
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    print(trl_versions())


def trl_versions() -> str:
    code = "import trl, transformers, torch; print(trl.__version__, transformers.__version__, torch.__version__)"
    out = subprocess.run([str(TRL_PYTHON), "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{TRL_VENV} is not usable (run with --setup):\n{out.stderr[-2000:]}")
    trl, transformers, torch = out.stdout.split()
    line = f"{TRL_VENV.name}: trl {trl}, transformers {transformers}, torch {torch}"
    if transformers != metadata.version("transformers"):
        line += (
            f" (tcopd's venv has transformers {metadata.version('transformers')}: rerun --setup)"
        )
    return line


# -------------------------------------------------------------------------------------- prompts


def load_texts(path: str, tokenizer, max_prompt_tokens: int) -> tuple[list[str], list[list[int]]]:
    """tcopd's training prompts as (texts, ids): the rows ``load_prompts`` keeps, in its order."""
    from tcopd.pipelines.train.data import load_prompts
    from tcopd.runtime.data.datasets import load_prepared
    from tcopd.runtime.data.prompts import render_prompt

    texts, ids = [], []
    for row in load_prepared(path):
        text = render_prompt(row["prompt"], tokenizer, "plain")
        toks = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(toks) <= max_prompt_tokens:
            texts.append(text)
            ids.append(list(toks))
    if ids != load_prompts(path, tokenizer, "plain", max_prompt_tokens).ids:
        sys.exit("the prompt texts do not reproduce tcopd's load_prompts ids")
    return texts, ids


def dataset_order(n: int, a: argparse.Namespace, seed: int) -> list[int]:
    """Prompt indices in tcopd's step order, each repeated samples_per_prompt times (TRL's rows)."""
    from tcopd.pipelines.train.data import step_prompts

    return [
        i
        for step in range(a.steps)
        for i in step_prompts(n, a.batch_size, seed, step)
        for _ in range(a.samples_per_prompt)
    ]


# ------------------------------------------------------------------------------------- training


def run_logged(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` with its output in ``log``; its wall seconds. Exits on failure, showing the tail."""
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **ENV})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed (rc {proc.returncode}): {' '.join(cmd)}\n{log.read_text()[-3000:]}")
    return wall


def train_tcopd(a: argparse.Namespace, world, name: str, seed: int, run_dir: Path) -> dict:
    from tcopd.config import read_yaml
    from tcopd.runtime.training.checkpoint import latest_checkpoint

    cmd = [sys.executable, "-m", "tcopd", "train", "--toy", "--lambdas", "1", "--seed", str(seed)]
    cmd += ["--student", str(world.student), "--expert", str(world.expert)]
    cmd += ["--data", str(world.train_files["math"]), "--out", str(run_dir / "train")]
    cmd += ["--steps", str(a.steps), "--batch-size", str(a.batch_size)]
    cmd += ["--samples-per-prompt", str(a.samples_per_prompt)]
    cmd += ["--max-response-tokens", str(a.max_new_tokens), "--lr", str(a.lr)]
    cmd += ["--temperature", "1.0", "--top-p", "1.0", "--grad-clip", "1.0"]
    cmd += ["--dtype", "float32", "--device", a.device, "--save-every", "0", "--no-grade"]
    cmd += ["--overwrite"] + (["--loss", "dense"] if name == "tcopd-dense" else [])
    wall = run_logged(cmd, run_dir / "train.log")
    rows = [json.loads(x) for x in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    cfg = read_yaml(run_dir / "train" / "config.yaml")
    return {
        "wall_s": wall,
        "train_s": sum(r["time_step_s"] for r in rows),
        "model": str(latest_checkpoint(run_dir / "train") / "model"),
        "optimizer_steps": a.steps * cfg["ppo_epochs"] * cfg["mini_batches"],
        "rollouts_per_generation": a.batch_size * a.samples_per_prompt,
        "command": " ".join(cmd),
    }


def train_trl(a: argparse.Namespace, world, name: str, seed: int, run_dir: Path, prompts) -> dict:
    texts, ids = prompts
    updates = TRL_UPDATES[name]
    order = dataset_order(len(texts), a, seed)
    generation_batch = a.batch_size * a.samples_per_prompt // updates
    spec = {
        "student": str(world.student),
        "teacher": str(world.expert),
        "prompts": texts,
        "prompt_ids": ids,
        "order": order,
        "steps": a.steps * updates,
        "generation_batch": generation_batch,
        "micro_batch": np.gcd(generation_batch, a.trl_micro_batch).item(),
        "lr": a.lr,
        "grad_clip": 1.0,
        "temperature": 1.0,
        "top_p": 1.0,
        "max_new_tokens": a.max_new_tokens,
        "seed": seed,
        "device": a.device,
        "work_dir": str(run_dir),
        "model_dir": str(run_dir / "model"),
    }
    (run_dir / "spec.json").write_text(json.dumps(spec))
    out = run_dir / "worker.json"
    cmd = [str(TRL_PYTHON), str(WORKER), str(run_dir / "spec.json"), str(out)]
    wall = run_logged(cmd, run_dir / "train.log")
    res = json.loads(out.read_text())
    # What TRL did, against what was asked: the step order, the batch size, the token ids.
    batches = res.pop("generation_batches")
    if res["global_step"] != spec["steps"] or [i for b in batches for i in b] != order:
        sys.exit(f"{name} seed {seed}: TRL did not follow tcopd's prompt order (see {run_dir})")
    if {len(b) for b in batches} != {generation_batch} or res["bad_tokenization"]:
        sys.exit(f"{name} seed {seed}: TRL's batches or prompt token ids differ from tcopd's")
    return {
        "wall_s": wall,
        "train_s": res.pop("train_s"),
        "model": spec["model_dir"],
        "optimizer_steps": spec["steps"],
        "rollouts_per_generation": generation_batch,
        "micro_batch": spec["micro_batch"],
        "command": " ".join(cmd),
        **res,
    }


def train(a: argparse.Namespace, world, name: str, seed: int, prompts) -> dict:
    """One configuration and seed, reusing a finished run (``run.json``)."""
    run_dir = Path(a.out) / name / f"seed{seed}"
    done = run_dir / "run.json"
    if done.is_file():
        print(f"  {name} seed {seed}: reusing {done}", flush=True)
        return json.loads(done.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"  {name} seed {seed}: training …", flush=True)
    if name == "student":
        rec = {"wall_s": None, "train_s": None, "model": str(world.student)}
    elif name.startswith("tcopd"):
        rec = train_tcopd(a, world, name, seed, run_dir)
    else:
        rec = train_trl(a, world, name, seed, run_dir, prompts)
    rec = {"config": name, "seed": seed, **rec}
    done.write_text(json.dumps(rec, indent=2))
    return rec


# ----------------------------------------------------------------------------------- evaluation


def evaluate(a: argparse.Namespace, model: str, out: Path) -> dict[str, float]:
    """``tcopd eval toy`` on ``model`` (resumable); per-problem accuracy {problem_id: c_p / n}."""
    if not (out / "summary.json").is_file():
        cmd = [sys.executable, "-m", "tcopd", "eval", "toy", "--model", model, "--out", str(out)]
        cmd += ["--n", str(a.eval_n), "--max-tokens", str(a.max_new_tokens)]
        cmd += ["--temperature", "1.0", "--top-p", "1.0", "--top-k", "0", "--template", "plain"]
        cmd += ["--seed", str(a.eval_seed), "--device", a.device, "--dtype", "float32"]
        cmd += ["--limit", str(a.eval_limit)] if a.eval_limit else []
        out.mkdir(parents=True, exist_ok=True)
        run_logged(cmd, out.parent / "eval.log")
    correct: dict[str, list[bool]] = {}
    for line in (out / "samples.jsonl").read_text().splitlines():
        row = json.loads(line)
        correct.setdefault(str(row["problem_id"]), []).append(row["correct"] is True)
    return {pid: float(np.mean(c)) for pid, c in correct.items()}


# ----------------------------------------------------------------------------------- statistics


def t_quantile(q: float, df: int) -> float:
    """Student's t quantile."""
    return float(stats.t.ppf(q, df))


def matrix(acc: dict[int, dict[str, float]], seeds: list[int], pids: list[str]) -> np.ndarray:
    """Per-problem accuracies as an (S, P) array, seeds × problems."""
    return np.array([[acc[s][p] for p in pids] for s in seeds])


def summarize(acc: dict[int, dict[str, float]], pids: list[str]) -> dict:
    """mean@n per seed and the mean over seeds ± SE over problems (in percent)."""
    seeds = sorted(acc)
    m_SP = matrix(acc, seeds, pids)
    per_problem = m_SP.mean(0)
    se = per_problem.std(ddof=1) / np.sqrt(len(pids)) if len(pids) > 1 else float("nan")
    return {
        "per_seed": {s: 100 * m_SP[i].mean() for i, s in enumerate(seeds)},
        "mean": 100 * per_problem.mean(),
        "se": 100 * se,
    }


def paired(acc_a: dict, acc_b: dict, pids: list[str]) -> dict:
    """A − B paired by seed and problem (percent points): mean ± SE over problems, 95 % CI."""
    seeds = sorted(set(acc_a) & set(acc_b))
    d_SP = matrix(acc_a, seeds, pids) - matrix(acc_b, seeds, pids)
    d_P = d_SP.mean(0)
    P = len(pids)
    se = d_P.std(ddof=1) / np.sqrt(P) if P > 1 else float("nan")
    half = t_quantile(0.975, P - 1) * se if P > 1 else float("nan")
    per_seed = d_SP.mean(1)
    seed_se = per_seed.std(ddof=1) / np.sqrt(len(seeds)) if len(seeds) > 1 else None
    return {
        "seeds": seeds,
        "diff": 100 * d_P.mean(),
        "se": 100 * se,
        "ci95": [100 * (d_P.mean() - half), 100 * (d_P.mean() + half)],
        "per_seed": [100 * x for x in per_seed],
        "seed_se": None if seed_se is None else 100 * seed_se,
    }


def verdict(a: str, b: str, p: dict) -> str:
    low, high = p["ci95"]
    return f"{a} > {b}" if low > 0 else f"{b} > {a}" if high < 0 else "no difference shown"


def time_ratios(runs: dict, a: str, b: str, clock: str) -> list[float]:
    """Per-seed ratio of a's time to b's on ``clock`` (wall_s or train_s)."""
    seeds = sorted(set(runs[a]) & set(runs[b]))
    return [runs[a][s][clock] / runs[b][s][clock] for s in seeds]


def compare(runs: dict, accs: dict, a: str, b: str, pids: list[str]) -> dict:
    p = paired(accs[a], accs[b], pids)
    p["claim"] = verdict(a, b, p)
    p["wall_ratio"] = time_ratios(runs, a, b, "wall_s")
    p["train_ratio"] = time_ratios(runs, a, b, "train_s")
    return p


# -------------------------------------------------------------------------------------- report


def fmt(xs: list[float], spec: str = ".2f") -> str:
    return ", ".join(format(x, spec) for x in xs)


def report(a, runs: dict, summaries: dict, comparisons: dict, n_problems: int) -> str:
    def median(name, clock):
        xs = [r[clock] for r in runs[name].values() if r[clock] is not None]
        return f"{statistics.median(xs):.1f}" if xs else "–"

    lines = [
        f"toy-math mean@{a.eval_n} (%) on {n_problems} problems; training {a.steps} steps × "
        f"{a.batch_size} prompts × {a.samples_per_prompt} samples, {a.max_new_tokens} tokens, "
        f"lr {a.lr:g}, fp32 {a.device}",
        "",
        "| config | wall s (median) | train s (median) | mean@n per seed | mean ± SE |",
        "|---|---:|---:|---|---:|",
    ]
    for name, s in summaries.items():
        per_seed = " / ".join(f"{v:.1f}" for v in s["per_seed"].values())
        lines.append(
            f"| {name} | {median(name, 'wall_s')} | {median(name, 'train_s')} | {per_seed} "
            f"| {s['mean']:.1f} ± {s['se']:.1f} |"
        )
    lines.append("")
    for (x, y), p in comparisons.items():
        seed_se = f", SE over seeds {p['seed_se']:.1f}" if p["seed_se"] is not None else ""
        lines.append(
            f"{x} − {y}: {p['diff']:+.1f} ± {p['se']:.1f} points (paired over {n_problems} "
            f"problems; 95% CI {p['ci95'][0]:+.1f} … {p['ci95'][1]:+.1f}; per seed "
            f"{fmt(p['per_seed'], '+.1f')}{seed_se}) → {p['claim']}"
        )
        if p["wall_ratio"]:
            lines.append(
                f"    time {x} / {y}: wall ×{statistics.median(p['wall_ratio']):.2f} "
                f"(per seed {fmt(p['wall_ratio'])}), train-only "
                f"×{statistics.median(p['train_ratio']):.2f} (per seed {fmt(p['train_ratio'])})"
            )
    return "\n".join(lines)


def comparison_pairs(names: list[str], summaries: dict) -> list[tuple[str, str]]:
    """Each trained config vs tcopd-sampled; tcopd-dense vs the better TRL config."""
    pairs = [(n, REFERENCE) for n in names if n != REFERENCE and REFERENCE in names]
    trl = [n for n in names if n.startswith("trl")]
    if "tcopd-dense" in names and trl:
        pairs.append(("tcopd-dense", max(trl, key=lambda n: summaries[n]["mean"])))
    return [(x, y) for x, y in pairs if "student" not in (x, y)]


# ---------------------------------------------------------------------------------------- main


def check_args(a: argparse.Namespace, ap: argparse.ArgumentParser) -> None:
    unknown = set(a.configs) - set(CONFIGS) - {"student"}
    if unknown:
        ap.error(f"unknown configs {sorted(unknown)}; choose from {', '.join(CONFIGS)}, student")
    rollouts = a.batch_size * a.samples_per_prompt
    if any(c.startswith("trl") for c in a.configs):
        if rollouts % max(TRL_UPDATES[c] for c in a.configs if c in TRL_UPDATES):
            ap.error("batch_size × samples_per_prompt must be divisible by 4 for trl-4upd")
        if not TRL_PYTHON.exists():
            ap.error(f"no {TRL_VENV.name}: run `{Path(__file__).name} --setup` first")


def check_out_dir(a: argparse.Namespace) -> None:
    """Runs are reused from ``--out`` only when they were made with the same settings."""
    settings = {
        k: v
        for k, v in vars(a).items()
        if k not in ("configs", "seeds", "out", "setup", "find_links")
    }
    path = Path(a.out) / "settings.json"
    if path.is_file() and json.loads(path.read_text()) != settings:
        sys.exit(f"{a.out} holds runs made with other settings ({path}): use another --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--setup", action="store_true", help="build .trl-venv (TRL 1.16) and exit")
    ap.add_argument("--find-links", default=None, help="--setup: a local wheel directory for pip")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated (default all)")
    ap.add_argument("--seeds", default="0,1", help="training seeds (default 0,1)")
    ap.add_argument("--steps", type=int, default=40, help="tcopd steps (default: toy recipe, 40)")
    ap.add_argument("--batch-size", type=int, default=32, help="prompts per step (default 32)")
    ap.add_argument("--samples-per-prompt", type=int, default=4, help="rollouts (default 4)")
    ap.add_argument("--max-new-tokens", type=int, default=96, help="response tokens (default 96)")
    ap.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    ap.add_argument("--eval-n", type=int, default=8, help="samples per problem (default 8)")
    ap.add_argument("--eval-limit", type=int, default=0, help="first N problems (default all)")
    ap.add_argument("--eval-seed", type=int, default=0, help="one eval seed for every model")
    ap.add_argument("--trl-micro-batch", type=int, default=32, help="TRL forward rows (default 32)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda, for both libraries")
    ap.add_argument("--out", default="runs/bench-vs-trl", help="output directory")
    a = ap.parse_args()
    if a.setup:
        return setup(a)
    a.configs = [c for c in a.configs.split(",") if c]
    seeds = [int(s) for s in a.seeds.split(",")]
    check_args(a, ap)

    from transformers import AutoTokenizer

    from tcopd.pipelines.train.config import RECIPES
    from tcopd.runtime.toy import ensure_toy

    world = ensure_toy()
    needs_prompts = any(c in TRL_UPDATES for c in a.configs)
    if needs_prompts:
        print(trl_versions(), flush=True)
        tokenizer = AutoTokenizer.from_pretrained(str(world.student))
        prompts = load_texts(
            str(world.train_files["math"]), tokenizer, RECIPES["toy"]["max_prompt_tokens"]
        )
    else:
        prompts = None
    check_out_dir(a)

    runs: dict[str, dict[int, dict]] = {c: {} for c in a.configs}
    accs: dict[str, dict[int, dict[str, float]]] = {c: {} for c in a.configs}
    for seed in seeds:
        for name in a.configs:
            if name == "student" and seed != seeds[0]:
                continue  # untrained: one evaluation is enough
            rec = train(a, world, name, seed, prompts)
            print(f"  {name} seed {seed}: evaluating …", flush=True)
            eval_dir = Path(a.out) / name / f"seed{seed}" / "eval"
            accs[name][seed] = evaluate(a, rec["model"], eval_dir)
            runs[name][seed] = rec | {"eval": str(eval_dir)}

    pids = sorted(next(iter(next(iter(accs.values())).values())))
    if any(sorted(acc) != pids for per_seed in accs.values() for acc in per_seed.values()):
        sys.exit("the evaluations do not cover the same problems")
    summaries = {name: summarize(accs[name], pids) for name in a.configs}
    pairs = comparison_pairs(a.configs, summaries)
    comparisons = {(x, y): compare(runs, accs, x, y, pids) for x, y in pairs}
    print()
    print(report(a, runs, summaries, comparisons, len(pids)))
    results = {
        "args": vars(a),
        "versions": {
            k: metadata.version(k) for k in ("torch", "transformers", "deepspeed", "numpy")
        },
        "runs": runs,
        "summary": summaries,
        "comparisons": {f"{x} vs {y}": p for (x, y), p in comparisons.items()},
    }
    (Path(a.out) / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwrote {Path(a.out) / 'results.json'}")


if __name__ == "__main__":
    main()

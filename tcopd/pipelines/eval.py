"""``tcopd eval``: sample n responses per problem, grade them, report mean@n and pass@k.

Algorithm choices:

- Data: a benchmark name (``aime24``, ``aime25``, ``math500``, ``toy``, ``toy-code``) through
  ``runtime.datasets.load_benchmark`` (with ``data``: a local copy of it), or ``data`` alone = a
  file in the prepared (verl) format. The
  prompt is the row's ``prompt`` messages rendered with ``template`` (``chat``: the tokenizer's
  chat template with ``enable_thinking=False``; ``plain``; ``auto``: chat when the tokenizer has
  a template, else plain). The gold answer is ``reward_model.ground_truth``.
- Generation is one engine call per problem (all n samples of one prompt — no padding), with the
  sampler seeded from ``(seed, problem position)``. So a problem's samples do not depend on
  which other problems ran before it, which is what makes resuming exact.
- Grading (``runtime.grading.Grader``: last ``\\boxed{}``, math-verify in worker processes with
  a per-sample wall-clock limit) overlaps with generation: a problem's samples are submitted as
  soon as they exist and rows are appended to ``samples.jsonl`` (fsynced) as verdicts arrive.
- Resume: re-running the same command reads ``samples.jsonl``, keeps the finished
  ``(problem_id, sample_index)`` pairs, regenerates only problems with missing samples (the
  same seed gives the same samples) and appends just the missing rows. The summary is computed
  from the file, so it equals an uninterrupted run's. A different configuration in the same
  directory is refused (``config.yaml`` is compared).
- A prompt longer than the model's context is skipped with a counted warning
  (``too_long="skip"``, reported as ``skipped_too_long``) or is an error (``"fail"``); the
  response budget is clamped to the room the context leaves.
- Metrics (``core.metrics``): mean@n and pass@k as percentages, the standard error of mean@n
  across problems, ungraded samples counted as not correct and reported.
- Several models: each gets ``out/<name>/``, plus ``out/comparison.json``.
- ``from_samples``: re-grade an existing ``samples.jsonl`` without a model. Every sample counts,
  also when problems have different numbers of samples n_p (files graded elsewhere): mean@n is
  then the mean over problems of each problem's own mean, pass@k is reported for k up to the
  smallest n_p, and one ``warning`` progress event names the range. A repeated
  ``(problem_id, sample_index)`` is an error (it would otherwise be counted once, silently). With
  no model known, the run is named by its source file.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tcopd.config import field, to_dict, write_resolved
from tcopd.core import metrics
from tcopd.errors import ConfigError, DataError
from tcopd.runtime import io
from tcopd.runtime.datasets import BENCHMARKS

SAMPLE_FIELDS = (
    "problem_id",
    "sample_index",
    "prompt",
    "response",
    "num_tokens",
    "finish_reason",
    "gold",
    "extracted",
    "correct",
)
# Fields a run's identity depends on: resuming with any of them changed would mix two runs.
IDENTITY_FIELDS = (
    "benchmark",
    "data",
    "n",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "engine",
    "seed",
    "template",
    "dtype",
    "token_budget",
    "limit",
)

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class EvalConfig:
    benchmark: str | None = field(
        None, help="Benchmark name: aime24, aime25, math500, toy or toy-code."
    )
    data: str | None = field(
        None, help="Prepared-format data file (jsonl/json/parquet) instead of a benchmark."
    )
    models: tuple[str, ...] = field(
        (), help="Model(s) to evaluate: local HF directory or Hub id; several → comparison."
    )
    tokenizer: str | None = field(None, help="Tokenizer path (default: each model's own).")
    out: str | None = field(None, help="Output directory (default runs/eval-<benchmark>).")
    n: int = field(32, help="Samples per problem.")
    temperature: float = field(1.0, help="Sampling temperature (0 = greedy).")
    top_p: float = field(1.0, help="Nucleus sampling mass (1.0 = off).")
    top_k: int = field(0, help="Top-k truncation (0 = off; transformers' own default would be 50).")
    max_tokens: int = field(16384, help="Maximum new tokens per response.")
    engine: Literal["hf", "vllm"] = field("hf", help="Rollout engine: hf (transformers) or vllm.")
    seed: int = field(0, help="Sampling seed (reaches the sampler; same seed → same samples).")
    template: Literal["auto", "chat", "plain"] = field(
        "auto",
        help="Prompt template: chat (tokenizer's), plain, or auto (chat if the tokenizer has one).",
    )
    device: str | None = field(
        None, help="HF engine device (default: cuda if available, else cpu)."
    )
    dtype: str = field("float32", help="Model dtype: float32, bfloat16 or float16.")
    token_budget: int = field(
        65536, help="HF engine: rows × (prompt + max_tokens) per generate call."
    )
    grader_workers: int = field(2, help="Grading worker processes.")
    grade_timeout_s: float = field(
        10.0, help="Wall-clock limit per graded sample (then: ungraded)."
    )
    too_long: Literal["skip", "fail"] = field(
        "skip", help="A prompt longer than the model's context: skip or fail."
    )
    limit: int | None = field(None, help="Evaluate only the first N problems.")
    from_samples: str | None = field(
        None, help="Re-grade this samples.jsonl instead of generating."
    )
    gpu_memory_utilization: float = field(0.85, help="vLLM: fraction of GPU memory to use.")
    tensor_parallel_size: int = field(1, help="vLLM: tensor-parallel GPUs.")

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(
                f"--n must be at least 1 (got {self.n}): the number of samples per problem"
            )
        if self.max_tokens < 1:
            raise ConfigError(f"--max-tokens must be at least 1 (got {self.max_tokens})")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1 (got {self.limit})")
        if self.grade_timeout_s <= 0 or self.grader_workers < 1:
            raise ConfigError("--grade-timeout must be > 0 and --grader-workers at least 1")
        if self.from_samples is None:
            if self.benchmark is None and self.data is None:
                raise ConfigError(f"give a benchmark ({', '.join(BENCHMARKS)}) or --data FILE")
            if self.benchmark is not None and self.benchmark not in BENCHMARKS:
                raise ConfigError(
                    f"unknown benchmark {self.benchmark!r}; known: {', '.join(BENCHMARKS)} (or --data FILE)"
                )
            if not self.models and not (self.benchmark or "").startswith("toy"):
                raise ConfigError("--model is required (a local HF model directory or a Hub id)")


@dataclass
class ModelRun:
    model: str
    out_dir: Path
    summary: dict[str, Any]


@dataclass
class EvalResult:
    runs: list[ModelRun]
    comparison_path: Path | None = None


@dataclass
class Problem:
    index: int  # position in the benchmark (seeds the sampler)
    problem_id: str
    messages: list[dict[str, Any]]
    gold: str


# ------------------------------------------------------------------------------------- loading


def _rows_to_problems(rows: Sequence[dict[str, Any]], source: str) -> list[Problem]:
    ids: list[str] = []
    for i, row in enumerate(rows):
        extra = row.get("extra_info") or {}
        ids.append(
            str(extra.get("id", extra.get("index", i))) if isinstance(extra, dict) else str(i)
        )
    if len(set(ids)) != len(ids):
        ids = [str(i) for i in range(len(rows))]
    problems = []
    for i, (pid, row) in enumerate(zip(ids, rows, strict=True)):
        try:
            messages = list(row["prompt"])
            gold = row["reward_model"]["ground_truth"]
        except (KeyError, TypeError):
            raise DataError(
                f"{source}: row {i + 1} lacks prompt or reward_model.ground_truth (prepared format)"
            ) from None
        problems.append(Problem(i, pid, messages, str(gold)))
    return problems


def load_problems(config: EvalConfig) -> tuple[str, list[Problem]]:
    """(benchmark label, problems) for a benchmark name or a prepared-format file."""
    from tcopd.runtime import datasets

    if config.benchmark is not None:  # with --data: a local copy of that benchmark
        rows = datasets.load_benchmark(config.benchmark, from_path=config.data)
        label, source = config.benchmark, config.data or config.benchmark
    else:
        rows = datasets.load_prepared(config.data)  # type: ignore[arg-type]
        label, source = Path(config.data).stem, config.data  # type: ignore[arg-type]
    problems = _rows_to_problems(rows, str(source))
    if config.limit is not None:
        problems = problems[: config.limit]
    if not problems:
        raise DataError(f"{source}: no problems to evaluate")
    return str(label), problems


def _resolve_models(config: EvalConfig) -> list[str]:
    if config.models:
        return list(config.models)
    from tcopd.runtime import toy

    return [str(toy.ensure_toy().student)]


def _run_names(models: Sequence[str]) -> list[str]:
    names: list[str] = []
    for m in models:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(m.rstrip("/")).name or m) or "model"
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


# ----------------------------------------------------------------------------------- summaries


def _check_sample_rows(
    rows: Sequence[tuple[int, dict[str, Any]]], path: Path, required: Sequence[str]
) -> None:
    for lineno, row in rows:
        missing = [f for f in required if f not in row]
        if missing:
            raise DataError(
                f"{path}:{lineno}: sample row lacks {', '.join(missing)}; each row needs {', '.join(required)}"
            )


def summarize_samples(
    rows: Sequence[dict[str, Any]],
    problem_order: Sequence[str],
    n: int | None,
    header: dict[str, Any],
) -> dict[str, Any]:
    """summary.json content from sample rows (problems in ``problem_order``).

    ``n``: keep each problem's first n samples (a generation run's n); None: every sample, however
    many each problem has. ``n`` in the summary is that common n, or None when n_p varies;
    ``n_min`` / ``n_max`` give the range either way.
    """
    by_problem: dict[str, dict[int, dict[str, Any]]] = {}
    for r in rows:
        by_problem.setdefault(str(r["problem_id"]), {})[int(r["sample_index"])] = r
    correct, tokens, truncated = [], [], 0
    for pid in problem_order:
        samples = by_problem.get(pid, {})
        ordered = [samples[s] for s in sorted(samples)][:n]
        if not ordered:
            continue
        correct.append([s["correct"] for s in ordered])
        tokens.extend(int(s["num_tokens"]) for s in ordered)
        truncated += sum(1 for s in ordered if s["finish_reason"] == "length")
    if not correct:
        raise DataError("no graded samples to summarise")
    s = metrics.summarize(correct)
    n_min, n_max = min(map(len, correct)), max(map(len, correct))
    return {
        **header,
        "n": n if n is not None else (n_min if n_min == n_max else None),
        "n_min": n_min,
        "n_max": n_max,
        "problems": s["problems"],
        "samples": s["samples"],
        "mean_at_n": 100.0 * s["mean_at_n"],
        "stderr": 100.0 * s["stderr"],
        "pass_at_k": {str(k): 100.0 * v for k, v in s["pass_at_k"].items()},
        "mean_tokens": sum(tokens) / len(tokens),
        "truncated_fraction": truncated / len(tokens),
        "ungraded": s["ungraded"],
    }


# ---------------------------------------------------------------------------------------- eval


def _sampling_header(config: EvalConfig, template: str) -> dict[str, Any]:
    return {
        "temperature": config.temperature,
        "top_p": config.top_p,
        "top_k": config.top_k,
        "max_tokens": config.max_tokens,
        "seed": config.seed,
        "engine": config.engine,
        "template": template,
    }


def _check_same_run(out_dir: Path, config: EvalConfig, model: str) -> None:
    """Refuse to resume into a directory that holds a run with other settings."""
    path = out_dir / "config.yaml"
    if not path.exists() or not (out_dir / "samples.jsonl").exists():
        return
    from tcopd.config import read_yaml

    old = read_yaml(path)
    new = {**{k: to_dict(config)[k] for k in IDENTITY_FIELDS}, "model": model}
    diff = [k for k, v in new.items() if old.get(k) != v]
    if diff:
        k = diff[0]
        raise ConfigError(
            f"{out_dir} holds an eval run with {k}={old.get(k)!r} (now {new[k]!r}); "
            "use another --out, or delete that directory to start over"
        )


def _resolve_template(template: str, tokenizer: Any) -> str:
    if template != "auto":
        return template
    return "chat" if getattr(tokenizer, "chat_template", None) else "plain"


def _evaluate_model(
    config: EvalConfig,
    model: str,
    label: str,
    problems: list[Problem],
    out_dir: Path,
    progress: Progress | None,
) -> dict[str, Any]:
    from tcopd.runtime import models as model_io
    from tcopd.runtime.grading import Grader, extract_boxed
    from tcopd.runtime.prompts import render_prompt
    from tcopd.runtime.rollout import SamplingParams, batch_seed, make_engine

    t_start = time.monotonic()
    _check_same_run(out_dir, config, model)
    tokenizer = model_io.load_tokenizer(config.tokenizer or model)
    template = _resolve_template(config.template, tokenizer)
    samples_path = out_dir / "samples.jsonl"
    done_rows = io.read_jsonl_tolerant(samples_path)
    done = {(str(r["problem_id"]), int(r["sample_index"])) for r in done_rows}

    # Prompts first (cheap), so that bad data fails before a model is loaded.
    context = model_io.max_positions(model_io.load_config(model))
    todo: list[tuple[Problem, str, list[int]]] = []
    kept: list[str] = []
    skipped = 0
    for prob in problems:
        text = render_prompt(prob.messages, tokenizer, template)
        ids = tokenizer(text, add_special_tokens=(template == "plain"))["input_ids"]
        if context is not None and len(ids) >= context:
            if config.too_long == "fail":
                raise DataError(
                    f"problem {prob.problem_id}: prompt has {len(ids)} tokens, the model's context is {context}; "
                    "use a model with a longer context, or --too-long skip"
                )
            skipped += 1
            continue
        kept.append(prob.problem_id)
        if any((prob.problem_id, s) not in done for s in range(config.n)):
            todo.append((prob, text, ids))

    total = len(kept) * config.n
    finished = sum(1 for pid in kept for s in range(config.n) if (pid, s) in done)
    gen_tokens, gen_seconds = 0, 0.0
    if progress:
        progress(
            {"event": "start", "model": model, "total": total, "done": finished, "skipped": skipped}
        )

    write_resolved(
        {**to_dict(config), "model": model, "resolved_template": template}, out_dir / "config.yaml"
    )
    if todo:
        engine = make_engine(
            config.engine,
            model,
            config.tokenizer or model,
            device=config.device,
            token_budget=config.token_budget,
            dtype=config.dtype,
            gpu_memory_utilization=config.gpu_memory_utilization,
            tensor_parallel_size=config.tensor_parallel_size,
        )
        pending: dict[tuple[str, int], dict[str, Any]] = {}
        with (
            Grader(config.grader_workers, config.grade_timeout_s) as grader,
            io.JsonlAppender(samples_path) as out,
        ):

            def drain(block: bool) -> None:
                nonlocal finished
                for key, verdict in grader.as_completed(block=block):
                    row = pending.pop(key)  # type: ignore[arg-type]
                    row["correct"] = verdict
                    out.write(row)
                    finished += 1
                    if progress:
                        progress({"event": "graded", "done": finished, "total": total})

            for prob, text, ids in todo:
                room = (
                    config.max_tokens
                    if context is None
                    else min(config.max_tokens, context - len(ids))
                )
                sampling = SamplingParams(
                    n=config.n,
                    temperature=config.temperature,
                    top_p=config.top_p,
                    top_k=config.top_k,
                    max_new_tokens=room,
                    seed=batch_seed(config.seed, prob.index, 0),
                )
                t0 = time.monotonic()
                completions = engine.generate([ids], sampling)
                gen_seconds += time.monotonic() - t0
                for c in completions:
                    key = (prob.problem_id, c.sample_index)
                    gen_tokens += c.num_tokens
                    if key in done:
                        continue
                    pending[key] = {
                        "problem_id": prob.problem_id,
                        "sample_index": c.sample_index,
                        "prompt": text,
                        "response": c.text,
                        "num_tokens": c.num_tokens,
                        "finish_reason": c.finish_reason,
                        "gold": prob.gold,
                        "extracted": extract_boxed(c.text),
                        "correct": None,
                    }
                    grader.submit(key, prob.gold, c.text)
                if progress:
                    progress({"event": "generated", "tokens": gen_tokens, "seconds": gen_seconds})
                drain(block=False)
            drain(block=True)
        engine = None

    rows = io.read_jsonl_tolerant(samples_path)
    header = {"benchmark": label, "model": model}
    summary = summarize_samples(rows, kept, config.n, header)
    summary.update(
        {
            "skipped_too_long": skipped,
            "sampling": _sampling_header(config, template),
            "wall_s": time.monotonic() - t_start,
            "tokens_per_s": gen_tokens / gen_seconds if gen_seconds > 0 else None,
        }
    )
    io.write_json(out_dir / "summary.json", summary)
    return summary


def _samples_per_problem(rows: Sequence[tuple[int, dict[str, Any]]], path: Path) -> dict[str, int]:
    """n_p per problem, in file order; a repeated ``(problem_id, sample_index)`` is an error."""
    first_line: dict[tuple[str, int], int] = {}
    per_problem: dict[str, int] = {}
    for lineno, row in rows:
        key = (str(row["problem_id"]), int(row["sample_index"]))
        if key in first_line:
            raise DataError(
                f"{path}:{lineno}: problem {key[0]!r} sample_index {key[1]} appears again "
                f"(first on line {first_line[key]}); each (problem_id, sample_index) must be unique"
            )
        first_line[key] = lineno
        per_problem[key[0]] = per_problem.get(key[0], 0) + 1
    return per_problem


def regrade(config: EvalConfig, progress: Progress | None = None) -> EvalResult:
    """Re-grade ``config.from_samples`` into ``config.out`` (no model needed)."""
    from tcopd.runtime.grading import Grader, extract_boxed

    t_start = time.monotonic()
    src = Path(config.from_samples)  # type: ignore[arg-type]
    if not src.is_file():
        raise DataError(f"samples file {str(src)!r} does not exist")
    rows = list(io.iter_jsonl(src))
    _check_sample_rows(rows, src, ("problem_id", "sample_index", "response", "gold"))
    if not rows:
        raise DataError(f"{src}: no samples")
    per_problem = _samples_per_problem(rows, src)
    out_dir = Path(config.out or src.parent / "regraded")
    old_summary = src.parent / "summary.json"
    header: dict[str, Any] = {"benchmark": src.stem, "model": None}
    if old_summary.is_file():
        import json

        try:
            old = json.loads(old_summary.read_text())
            header = {"benchmark": old.get("benchmark"), "model": old.get("model")}
            if "sampling" in old:
                header["sampling"] = old["sampling"]
        except json.JSONDecodeError:
            pass
    if progress:
        progress(
            {
                "event": "start",
                "model": header["model"],
                "total": len(rows),
                "done": 0,
                "skipped": 0,
            }
        )
    n_min, n_max = min(per_problem.values()), max(per_problem.values())
    if n_min != n_max and progress:
        progress(
            {
                "event": "warning",
                "message": f"samples per problem vary from {n_min} to {n_max}: mean@n uses every "
                f"sample (each problem's own mean); pass@k reported for k ≤ {n_min}",
            }
        )
    graded: list[dict[str, Any]] = []
    with Grader(config.grader_workers, config.grade_timeout_s) as grader:
        for i, (_, row) in enumerate(rows):
            grader.submit(i, str(row["gold"]), str(row["response"]))
        verdicts = {}
        for k, v in grader.as_completed():
            verdicts[k] = v
            if progress:
                progress({"event": "graded", "done": len(verdicts), "total": len(rows)})
    for i, (_, row) in enumerate(rows):
        new = {f: row.get(f) for f in SAMPLE_FIELDS}
        new.update({k: v for k, v in row.items() if k not in new})
        new["num_tokens"] = row.get("num_tokens", 0) or 0
        new["finish_reason"] = row.get("finish_reason", "stop") or "stop"
        new["extracted"] = extract_boxed(str(row["response"]))
        new["correct"] = verdicts[i]
        graded.append(new)
    io.write_jsonl(out_dir / "samples.jsonl", graded)
    summary = summarize_samples(graded, list(per_problem), None, header)
    summary["regraded_from"] = str(src)
    summary["wall_s"] = time.monotonic() - t_start
    io.write_json(out_dir / "summary.json", summary)
    return EvalResult([ModelRun(header["model"] or str(src), out_dir, summary)])


def run(config: EvalConfig, progress: Progress | None = None) -> EvalResult:
    """Evaluate each model of ``config`` (or re-grade ``from_samples``); see the module docstring."""
    if config.from_samples is not None:
        return regrade(config, progress)
    label, problems = load_problems(config)
    models = _resolve_models(config)
    out_root = Path(config.out or f"runs/eval-{label}")
    names = _run_names(models)
    runs = []
    for model, name in zip(models, names, strict=True):
        out_dir = out_root if len(models) == 1 else out_root / name
        summary = _evaluate_model(config, model, label, problems, out_dir, progress)
        runs.append(ModelRun(model, out_dir, summary))
    comparison = None
    if len(runs) > 1:
        comparison = io.write_json(
            out_root / "comparison.json",
            [{"name": n, **r.summary} for n, r in zip(names, runs, strict=True)],
        )
    return EvalResult(runs, comparison)

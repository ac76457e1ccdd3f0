"""``tcopd eval``: sample n responses per problem, grade them, report mean@n and pass@k.

Algorithm choices:

- Data: a benchmark name (``aime24``, ``aime25``, ``math500``, ``toy``, ``toy-code``,
  ``toy-multitask``) through
  ``pipelines.benchmarks.load_benchmark`` (with ``data``: a local copy of it), or ``data`` alone = a
  file in the prepared (verl) format. The
  prompt is the row's ``prompt`` messages rendered with ``template`` (``chat``: the tokenizer's
  chat template with ``enable_thinking=False``; ``plain``; ``auto``: chat when the tokenizer has
  a template, else plain). The gold answer is ``reward_model.ground_truth``; the response's
  answer is read as the rows' ``reward_model.answer_format`` says (default: the last box).
- ``context``: a file of chat messages (a teacher prompt, docs/train.md) placed before every
  problem's own messages, rendered as a context teacher's prompt is in training
  (``runtime.scoring.contexts``): the model behind that prompt is what is evaluated.
- Generation is one engine call per problem (all n samples of one prompt — no padding), with the
  sampler seeded from ``(seed, problem position)``. So a problem's samples do not depend on
  which other problems ran before it, which is what makes resuming exact. With
  ``problems_per_call`` K > 1 the kept problems are taken in fixed groups of K (positions
  [gK, (g+1)K)), one padded call per group seeded from its first problem, the response budget
  clamped to the group's tightest context: many times faster for short answers on a CPU, other
  samples than K = 1, and still exact on resume (a group with a missing sample is regenerated
  whole and only its missing rows are written).
- Grading (``runtime.evaluation.grading.Grader``: last ``\\boxed{}`` or last number, math-verify in worker processes with
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
- ``from_samples``: re-grade an existing ``samples.jsonl`` without a model (``eval_samples``).
  Every sample counts, also when problems have different numbers of samples n_p (files graded
  elsewhere): mean@n is then the mean over problems of each problem's own mean, pass@k is
  reported for k up to the smallest n_p, and one ``warning`` event names the range. A repeated
  ``(problem_id, sample_index)`` is an error. With no model known, the run is named by its
  source file.

Progress (``tcopd.progress.Event``), per model: ``Event("eval", done, total, detail=name)`` when
it starts (``done``: samples already in the file on resume), ``Event("warning", detail=message)``,
``Event("generated", done, total, detail="N tok/s")`` after each generate call (in calls: one
per problem, or per group of ``problems_per_call``) and ``Event("graded", done, total, detail=name)`` per verdict (in samples).

The steps of one model: ``_plan`` (prompts, resume) → ``_sample_and_grade`` → ``_write_summary``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcopd.config import read_yaml, to_dict, write_resolved
from tcopd.errors import ConfigError, DataError
from tcopd.pipelines.benchmarks import BENCHMARKS
from tcopd.pipelines.eval_config import IDENTITY_FIELDS, EvalConfig
from tcopd.pipelines.eval_problems import (
    Problem,
    context_of,
    load_problems,
    render,
    resolve_template,
)
from tcopd.pipelines.eval_samples import (
    SAMPLE_FIELDS,
    grade_rows,
    read_samples,
    source_header,
    summarize_samples,
    varying_n_warning,
)
from tcopd.progress import Progress, report
from tcopd.runtime import toy
from tcopd.runtime.data import io
from tcopd.runtime.evaluation.grading import Grader, extract_answer
from tcopd.runtime.models import loading as model_io

__all__ = [
    "BENCHMARKS",
    "IDENTITY_FIELDS",
    "SAMPLE_FIELDS",
    "EvalConfig",
    "EvalResult",
    "ModelRun",
    "Problem",
    "load_problems",
    "regrade",
    "run",
    "summarize_samples",
]


@dataclass
class ModelRun:
    model: str
    out_dir: Path
    summary: dict[str, Any]


@dataclass
class EvalResult:
    runs: list[ModelRun]
    comparison_path: Path | None = None


def _resolve_models(config: EvalConfig) -> list[str]:
    if config.models:
        return list(config.models)
    if config.benchmark == "toy-multitask":
        return [str(toy.ensure_toy_multitask().student)]
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


def _display_name(model: str) -> str:
    """A model's name in progress events: its directory name (a Hub id: the part after '/')."""
    return Path(model.rstrip("/")).name or model


# ------------------------------------------------------------------------ one model: the steps


@dataclass
class _Plan:
    """What one model's run has to do, from the prompts and the rows already in the file."""

    template: str  # resolved: chat or plain
    context: int | None  # the model's context length (None: unknown)
    kept: list[str]  # problem ids whose prompt fits the context
    todo: list[tuple[Problem, str, list[int]]]  # (problem, prompt text, ids) with samples missing
    rendered: list[tuple[Problem, str, list[int]]]  # the same for every kept problem, in order
    done: set[tuple[str, int]]  # (problem_id, sample_index) already in samples.jsonl
    skipped: int  # prompts longer than the context
    total: int  # samples the summary will count
    finished: int  # of those, already in the file
    domains: dict[str, str | None] = field(default_factory=dict)  # problem id → its domain


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
    # a setting added after the run was written has its default there
    old = {**to_dict(EvalConfig(from_samples="-")), **read_yaml(path)}
    new = {**{k: to_dict(config)[k] for k in IDENTITY_FIELDS}, "model": model}
    diff = [k for k, v in new.items() if old.get(k) != v]
    if diff:
        k = diff[0]
        raise ConfigError(
            f"{out_dir} holds an eval run with {k}={old.get(k)!r} (now {new[k]!r}); "
            "use another --out, or delete that directory to start over"
        )


def _plan(config: EvalConfig, model: str, problems: list[Problem], out_dir: Path) -> _Plan:
    """Tokenized prompts and the samples already in the file (resume).

    Cheap, and done before a model is loaded: bad data or a too-long prompt fails fast.
    """
    tokenizer = model_io.load_tokenizer(config.tokenizer or model)
    template = resolve_template(config.template, tokenizer)
    rows = io.read_jsonl_tolerant(out_dir / "samples.jsonl")
    done = {(str(r["problem_id"]), int(r["sample_index"])) for r in rows}
    context = model_io.max_positions(model_io.load_config(model))
    plan = _Plan(template, context, [], [], [], done, skipped=0, total=0, finished=0)
    plan.domains = {p.problem_id: p.domain for p in problems}
    behind = context_of(config)
    for prob in problems:
        text = render(prob.messages, tokenizer, template, behind)
        ids = tokenizer(text, add_special_tokens=(template == "plain"))["input_ids"]
        if context is not None and len(ids) >= context:
            if config.too_long == "fail":
                raise DataError(
                    f"problem {prob.problem_id}: prompt has {len(ids)} tokens, the model's context is {context}; "
                    "use a model with a longer context, or --too-long skip"
                )
            plan.skipped += 1
            continue
        plan.kept.append(prob.problem_id)
        plan.rendered.append((prob, text, ids))
        if any((prob.problem_id, s) not in done for s in range(config.n)):
            plan.todo.append((prob, text, ids))
    plan.total = len(plan.kept) * config.n
    plan.finished = sum(1 for pid in plan.kept for s in range(config.n) if (pid, s) in done)
    return plan


def _sample_row(prob: Problem, prompt: str, completion: Any) -> dict[str, Any]:
    """A samples.jsonl row (SAMPLE_FIELDS) awaiting its verdict (``answer_format`` only when it
    is not the default box)."""
    row = {
        "problem_id": prob.problem_id,
        "sample_index": completion.sample_index,
        "prompt": prompt,
        "response": completion.text,
        "num_tokens": completion.num_tokens,
        "finish_reason": completion.finish_reason,
        "gold": prob.gold,
        "extracted": extract_answer(completion.text, prob.answer_format),
        "correct": None,
        "domain": prob.domain,
    }
    if prob.answer_format != "boxed":
        row["answer_format"] = prob.answer_format
    return row


class _Grading:
    """Rows waiting for their verdict; each verdict appends its row and reports progress."""

    def __init__(
        self,
        grader: Grader,
        out: io.JsonlAppender,
        plan: _Plan,
        progress: Progress | None,
        name: str,
    ):
        self.grader, self.out, self.progress, self.name = grader, out, progress, name
        self.finished, self.total = plan.finished, plan.total
        self.pending: dict[tuple[str, int], dict[str, Any]] = {}

    def submit(self, row: dict[str, Any]) -> None:
        key = (row["problem_id"], row["sample_index"])
        self.pending[key] = row
        fmt = row.get("answer_format", "boxed")
        self.grader.submit(key, row["gold"], row["response"], answer_format=fmt)

    def drain(self, block: bool) -> None:
        for key, verdict in self.grader.as_completed(block=block):
            row = self.pending.pop(key)  # type: ignore[arg-type]
            row["correct"] = verdict
            self.out.write(row)
            self.finished += 1
            report(self.progress, "graded", done=self.finished, total=self.total, detail=self.name)


def _engine(config: EvalConfig, model: str) -> Any:
    """The rollout engine (hf or vllm) for ``model`` with the config's settings."""
    # transformers is imported here, not at the top: `tcopd --help` should not pay for it
    from tcopd.runtime.generation.rollout import make_engine
    from tcopd.runtime.models import lora

    if config.engine == "vllm" and lora.adapter_dir(model) is not None:
        raise ConfigError(
            f"--engine vllm cannot load the adapter directory {model!r} yet: use --engine hf, or "
            "merge it first (tcopd prepare merge-lora --adapter DIR --out DIR)"
        )
    return make_engine(
        config.engine,
        model,
        config.tokenizer or model,
        device=config.device,
        token_budget=config.token_budget,
        dtype=config.dtype,
        gpu_memory_utilization=config.gpu_memory_utilization,
        tensor_parallel_size=config.tensor_parallel_size,
    )


def _sampling(config: EvalConfig, prob: Problem, room: int | None) -> Any:
    """One problem's n samples, seeded by its position (so resuming is exact); ``room``: context left."""
    from tcopd.runtime.generation.rollout import (  # transformers: see _engine
        SamplingParams,
        batch_seed,
    )

    return SamplingParams(
        n=config.n,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        max_new_tokens=config.max_tokens if room is None else min(config.max_tokens, room),
        seed=batch_seed(config.seed, prob.index, 0),
    )


def _calls(plan: _Plan, per_call: int) -> list[list[tuple[Problem, str, list[int]]]]:
    """The generate calls still to make: each problem with a missing sample alone (K = 1), or
    every fixed group of K kept problems that has one (see the module docstring)."""
    if per_call == 1:
        return [[t] for t in plan.todo]
    missing = {prob.problem_id for prob, _, _ in plan.todo}
    groups = [plan.rendered[i : i + per_call] for i in range(0, len(plan.rendered), per_call)]
    return [g for g in groups if any(prob.problem_id in missing for prob, _, _ in g)]


def _sample_and_grade(
    config: EvalConfig, model: str, plan: _Plan, out_dir: Path, progress: Progress | None
) -> tuple[int, float]:
    """Generate each problem's missing samples, grade them while the next problem generates.

    Returns (tokens generated, seconds spent in generate calls).
    """
    engine = _engine(config, model)
    tokens, seconds = 0, 0.0
    with (
        Grader(config.grader_workers, config.grade_timeout_s) as grader,
        io.JsonlAppender(out_dir / "samples.jsonl") as out,
    ):
        grading = _Grading(grader, out, plan, progress, _display_name(model))
        calls = _calls(plan, config.problems_per_call)
        for i, group in enumerate(calls):
            longest = max(len(ids) for _, _, ids in group)
            room = None if plan.context is None else plan.context - longest
            t0 = time.monotonic()
            completions = engine.generate(
                [ids for _, _, ids in group], _sampling(config, group[0][0], room)
            )
            seconds += time.monotonic() - t0
            tokens += sum(c.num_tokens for c in completions)
            for c in completions:
                prob, text, _ = group[c.prompt_index]
                if (prob.problem_id, c.sample_index) not in plan.done:
                    grading.submit(_sample_row(prob, text, c))
            rate = f"{tokens / seconds:.0f} tok/s" if seconds > 0 else ""
            report(progress, "generated", done=i + 1, total=len(calls), detail=rate)
            grading.drain(block=False)
        grading.drain(block=True)
    return tokens, seconds


def _write_summary(
    config: EvalConfig,
    model: str,
    label: str,
    plan: _Plan,
    out_dir: Path,
    generated: tuple[int, float],
    wall_s: float,
) -> dict[str, Any]:
    """summary.json from the whole samples.jsonl (this run's rows and any earlier ones)."""
    rows = io.read_jsonl_tolerant(out_dir / "samples.jsonl")
    summary = summarize_samples(rows, plan.kept, config.n, {"benchmark": label, "model": model})
    tokens, seconds = generated
    summary.update(
        {
            "skipped_too_long": plan.skipped,
            "sampling": _sampling_header(config, plan.template),
            "wall_s": wall_s,
            "tokens_per_s": tokens / seconds if seconds > 0 else None,
        }
    )
    domains = per_domain(rows, plan.kept, config.n, plan.domains)
    if domains:
        summary["domains"] = domains
    io.write_json(out_dir / "summary.json", summary)
    return summary


def per_domain(
    rows: Sequence[dict[str, Any]], order: Sequence[str], n: int | None, domain_of: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """mean@n ± stderr, mean tokens, problems of each domain, when the problems have several."""
    names = sorted({str(d) for d in domain_of.values() if d is not None})
    if len(names) < 2:
        return {}
    keep = ("problems", "samples", "mean_at_n", "stderr", "mean_tokens", "truncated_fraction")
    out = {}
    for d in names:
        ids = [p for p in order if str(domain_of.get(p)) == d]
        s = summarize_samples(rows, ids, n, {})
        out[d] = {k: s[k] for k in keep}
    return out


def _evaluate_model(
    config: EvalConfig,
    model: str,
    label: str,
    problems: list[Problem],
    out_dir: Path,
    progress: Progress | None,
) -> dict[str, Any]:
    """One model: plan (prompts, resume) → sample and grade → summary."""
    t_start = time.monotonic()
    _check_same_run(out_dir, config, model)
    plan = _plan(config, model, problems, out_dir)
    name = _display_name(model)
    report(progress, "eval", done=plan.finished, total=plan.total, detail=name)
    if plan.skipped:
        message = f"skipped {plan.skipped} problem(s) whose prompt exceeds the model's context"
        report(progress, "warning", detail=message)
    resolved = {**to_dict(config), "model": model, "resolved_template": plan.template}
    write_resolved(resolved, out_dir / "config.yaml")
    generated = (0, 0.0)
    if plan.todo:
        generated = _sample_and_grade(config, model, plan, out_dir, progress)
    wall_s = time.monotonic() - t_start
    return _write_summary(config, model, label, plan, out_dir, generated, wall_s)


# ------------------------------------------------------------------------------------- entry


def regrade(config: EvalConfig, progress: Progress | None = None) -> EvalResult:
    """Re-grade ``config.from_samples`` into ``config.out`` (no model needed)."""
    t_start = time.monotonic()
    src = Path(config.from_samples)  # type: ignore[arg-type]
    rows, per_problem = read_samples(src)
    out_dir = Path(config.out or src.parent / "regraded")
    header = source_header(src)
    name = _display_name(str(header["model"])) if header["model"] else "re-grade"
    report(progress, "eval", done=0, total=len(rows), detail=name)
    warning = varying_n_warning(per_problem)
    if warning:
        report(progress, "warning", detail=warning)
    graded = grade_rows(rows, config.grader_workers, config.grade_timeout_s, progress, name)
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

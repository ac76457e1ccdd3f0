"""``tcopd eval``'s problems: loading them (a benchmark or a prepared file) and rendering each
one's prompt (its template; ``--context``: behind a teacher prompt). See :mod:`tcopd.pipelines.eval`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcopd.errors import DataError
from tcopd.pipelines.benchmarks import load_benchmark
from tcopd.pipelines.eval_config import EvalConfig
from tcopd.runtime.data import datasets
from tcopd.runtime.data.prompts import render_prompt
from tcopd.runtime.scoring.contexts import Context, load_context_messages, plain_context


@dataclass
class Problem:
    index: int  # position in the benchmark (seeds the sampler)
    problem_id: str
    messages: list[dict[str, Any]]
    gold: str
    domain: str | None = None
    answer_format: str = "boxed"  # reward_model.answer_format


def rows_to_problems(rows: Sequence[dict[str, Any]], source: str) -> list[Problem]:
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
        fmt = row["reward_model"].get("answer_format") or "boxed"
        problems.append(Problem(i, pid, messages, str(gold), row.get("domain"), fmt))
    return problems


def load_problems(config: EvalConfig) -> tuple[str, list[Problem]]:
    """(benchmark label, problems) for a benchmark name or a prepared-format file."""
    if config.benchmark is not None:  # with --data: a local copy of that benchmark
        rows = load_benchmark(config.benchmark, from_path=config.data)
        label, source = config.benchmark, config.data or config.benchmark
    else:
        rows = datasets.load_prepared(config.data)  # type: ignore[arg-type]
        label, source = Path(config.data).stem, config.data  # type: ignore[arg-type]
    datasets.answer_format_of(rows, str(source))  # one format per file
    problems = rows_to_problems(rows, str(source))
    if config.limit is not None:
        problems = problems[: config.limit]
    if not problems:
        raise DataError(f"{source}: no problems to evaluate")
    return str(label), problems


def resolve_template(template: str, tokenizer: Any) -> str:
    if template != "auto":
        return template
    return "chat" if getattr(tokenizer, "chat_template", None) else "plain"


def context_of(config: EvalConfig) -> Context | None:
    """``--context FILE`` as a teacher context (its checks and one-line errors), or None."""
    if config.context is None:
        return None
    return Context("eval", config.context, load_context_messages(config.context))


def render(
    messages: list[dict[str, Any]], tokenizer: Any, template: str, context: Context | None
) -> str:
    """A problem's prompt text, behind ``context`` as a context teacher's prompt is rendered."""
    if context is None:
        return render_prompt(messages, tokenizer, template)
    if template == "plain":
        return plain_context(context) + render_prompt(messages, None, "plain")
    return render_prompt(context.as_messages() + list(messages), tokenizer, "chat")

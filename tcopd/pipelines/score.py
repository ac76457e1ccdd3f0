"""``tcopd score``: log-probs of given rollouts under the student, the reference and the teachers,
plus the per-token teacher-contrastive reward and advantage (docs/algorithm.md).

Algorithm choices:

- Only teachers with λ ≠ 0 (for some domain) are loaded and scored (:func:`active_teachers`);
  ``teacher_normalization`` decides K in the 1/K of the reward (docs/algorithm.md).
- The old policy is the student given (``A = r − β·(lp_student − lp_ref)``); the reference
  defaults to the student, in which case it is scored once and the numbers reused.
- Every model's tokenizer must equal the student's (:func:`check_same_tokenizer`); text rows
  (``prompt``/``response``) are tokenised with the student's tokenizer, no special tokens added.
- All inputs are validated (ids, lengths, vocabulary) before any model is loaded, so a bad row
  fails in seconds, naming the file and row.
- ``placement="shard"`` under torchrun: each rank scores its share of the rows (``rows[rank::W]``)
  while each teacher lives on one rank only; rank 0 gathers the rows and writes the output.
- A teacher given by URL is scored by its vLLM server(s) (docs/serving.md), under any placement
  (``server``: every teacher must be one). Its servers are checked with the rows (tokenizer,
  ``max_model_len`` ≥ the longest row + 1), before any model loads; served log-probs are raw, so
  ``temperature`` must be 1. ``compare_local`` then also scores each served teacher locally
  (the model path its server reports) and reports max / mean |served − local| per teacher.
- The output (same format as the input, by suffix) and ``<output>.config.yaml`` (the resolved
  settings, reusable with ``--config``) are written atomically.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from tcopd.config import field, write_resolved
from tcopd.core.objective import NORMALIZATIONS
from tcopd.core.signal import Signal, training_signal
from tcopd.core.teachers import (
    TeacherSpec,
    active_teachers,
    build_teacher_specs,
    validate_lambda_table,
)
from tcopd.errors import ConfigError, DataError
from tcopd.pipelines.score_rows import Row, context_prompts, read_score_rows
from tcopd.progress import Progress
from tcopd.runtime.data.io import write_rows
from tcopd.runtime.data.prompts import check_framing
from tcopd.runtime.models import loading as models
from tcopd.runtime.scoring import served
from tcopd.runtime.scoring.contexts import ContextRenderer, load_contexts
from tcopd.runtime.scoring.scorer import Scorer
from tcopd.runtime.training import distributed


@dataclass(frozen=True)
class ScoreConfig:
    student: str | None = field(
        None, help="Student model (also the old policy): local HF directory or Hub id."
    )
    reference: str | None = field(None, help="Reference model π_ref (default: the student).")
    expert: str | None = field(None, help="Expert teacher, named 'expert'; λ from lambdas.")
    anti_expert: str | None = field(
        None, help="Anti-expert teacher, named 'anti_expert'; λ from lambdas."
    )
    lambdas: str | list[float] | None = field(
        None,
        help="Comma-separated λ for expert, anti_expert (and λ-less teachers), e.g. '1.5,-0.5'.",
    )
    # the names ``tcopd train`` uses for the same settings (YAML keys, besides these)
    KEY_ALIASES: ClassVar[dict[str, str]] = {
        "teacher": "teachers",
        "teacher_placement": "placement",
        "score_token_budget": "token_budget",
    }
    teachers: list[str] = field(
        [], help="More teachers as NAME=PATH:LAMBDA, or NAME=URL:LAMBDA for a vLLM server."
    )
    served_teachers: list[dict] = field(
        [], help="Teachers on vLLM servers, [{name, url (one or a list), lam}] (docs/serving.md)."
    )
    teacher_prompt: list[str] = field(
        [],
        help="A teacher's own context NAME=FILE (JSON/YAML chat messages before each row's "
        "'messages'); such a teacher needs rows with 'messages' (docs/score.md).",
    )
    template: Literal["chat", "plain"] = field(
        "chat", help="How rows given as 'messages' are rendered: chat template or plain text."
    )
    lambda_table: dict[str, Any] = field(
        {}, help="Per-domain λ {domain: {teacher: λ}} for rows with a 'domain'."
    )
    teacher_normalization: Literal["active", "all", "none"] = field(
        "active",
        help="K in the reward's 1/K: teachers with λ≠0 (active), all configured (all), or 1 (none).",
    )
    beta: float = field(1.0, help="β of the KL-to-reference term of the advantage.")
    temperature: float = field(
        1.0, help="Sampling temperature τ: logits are divided by τ before the softmax."
    )
    input: str | None = field(
        None,
        help="Rollouts: .jsonl or .parquet rows {id, prompt_ids, response_ids} (or prompt/response text).",
    )
    output: str | None = field(
        None,
        help="Scores file (.jsonl or .parquet): the input rows plus logprobs, reward, advantage.",
    )
    chunk_size: int = field(
        512, help="Tokens per output-projection chunk (peak extra memory ∝ chunk × vocabulary)."
    )
    token_budget: int = field(
        16384, help="Tokens (prompt + response, with padding) per micro-batch forward."
    )
    device: str = field("auto", help="cpu, cuda, cuda:N or auto (CUDA if available).")
    dtype: str = field(
        "float32",
        help="Model weights dtype: float32, bfloat16 or float16 (log-sum-exp is float32).",
    )
    placement: Literal["local", "offload", "shard", "server"] = field(
        "local",
        help="Teachers on the device (local), in CPU memory moved in one at a time (offload), "
        "one rank each (shard), or all on vLLM servers (server; a URL teacher is served under any).",
    )
    teacher_timeout_s: float = field(300.0, help="Seconds per served-teacher scoring request.")
    teacher_retries: int = field(
        4, help="Retries of a failed served-teacher request (connection error, timeout, 5xx)."
    )
    teacher_max_inflight_tokens: int = field(
        65536,
        help="Tokens in flight per teacher server (prompt + response of unanswered requests).",
    )
    compare_local: bool = field(
        False,
        help="Also score each served teacher locally (its server's model path) and print "
        "max / mean |served − local| per teacher.",
    )
    packing: Literal["auto", "on", "off"] = field(
        "auto", help="Padding-free packing: auto (with flash-attention), on, off (right padding)."
    )

    def __post_init__(self) -> None:
        if self.teacher_normalization not in NORMALIZATIONS:
            raise ConfigError(f"teacher_normalization must be one of {', '.join(NORMALIZATIONS)}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.chunk_size < 1 or self.token_budget < 1:
            raise ConfigError("chunk_size and token_budget must be positive integers")
        served.ServerSettings(
            self.teacher_timeout_s, self.teacher_retries, self.teacher_max_inflight_tokens
        )  # validates


@dataclass(frozen=True)
class ScoreSummary:
    output: Path | None
    config_path: Path | None
    rows: int
    tokens: int
    seconds: float
    tokens_per_s: float
    padding_fraction: float
    peak_mem_gb: dict[str, float]
    reward_mean: float
    advantage_mean: float
    logratio_mean: dict[str, float]
    teachers: list[TeacherSpec]
    model_names: list[str]
    compare: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)


def _teachers(config: ScoreConfig) -> tuple[list[TeacherSpec], list[TeacherSpec], dict]:
    specs = build_teacher_specs(
        config.expert, config.anti_expert, config.lambdas, config.teachers, config.served_teachers
    )
    table = validate_lambda_table(config.lambda_table, specs) if config.lambda_table else {}
    active = active_teachers(specs, table)
    remote = [s.name for s in active if s.served]
    local = [s.name for s in active if not s.served]
    if remote and config.temperature != 1.0:
        raise ConfigError(
            f"served teacher {remote[0]!r} gives log-probs at temperature 1, not "
            f"{config.temperature:g}: use --temperature 1 or a local teacher (docs/serving.md)"
        )
    if config.placement == "server" and local:
        raise ConfigError(
            f"--placement server: teacher {local[0]!r} is a path, not a server URL "
            "(give its URL, or use another placement: URL teachers are served under any)"
        )
    if config.compare_local and not remote:
        raise ConfigError("--compare-local compares served teachers: give a teacher by URL")
    return specs, active, table


def _check_config(config: ScoreConfig) -> None:
    for key in ("student", "input", "output"):
        if not getattr(config, key):
            raise ConfigError(
                f"missing --{key.replace('_', '-')}: tcopd score needs --student, --input and --output"
            )


def run(config: ScoreConfig, progress: Progress | None = None) -> ScoreSummary:
    """Score every row of ``config.input``; write ``config.output`` and its resolved config."""
    _check_config(config)
    specs, active, table = _teachers(config)
    named_paths = {"student": config.student, "reference": config.reference or config.student}
    named_paths |= {s.name: s.path for s in active if not s.served}
    rows, toks, own = _check_models_and_rows(config, named_paths, active)  # 1. cheap, no load
    servers = _connect(config, active, toks["student"], rows, own)
    info, owner = _placement(config, [s for s in active if not s.served])  # 2. where things run
    mine = rows[info.rank :: info.world_size]
    own = {n: p[info.rank :: info.world_size] for n, p in own.items()}
    scorer = _load_scorer(config, named_paths, info, owner, servers)  # 3. load and score
    t0 = time.perf_counter()
    result = scorer.score(
        [r.prompt_ids for r in mine],
        [r.response_ids for r in mine],
        progress=progress,
        prompts_of=own,
    )
    seconds = time.perf_counter() - t0
    logprobs = dict(result.logprobs)
    logprobs.setdefault("reference", logprobs["student"])  # π_ref is the student
    out_rows, signal = _rewards(
        config, specs, active, table, mine, logprobs
    )  # 4. docs/algorithm.md
    local = {
        "rows": out_rows,
        "tokens": int(signal.mask_BT.sum().item()),
        "reward_sum": float((signal.reward_BT * signal.mask_BT).sum()),
        "adv_sum": float((signal.adv_BT * signal.mask_BT).sum()),
        "ratio_sums": {k: float(v) for k, v in signal.logratio_sums().items()},
        "stats": result.stats,
        "compare": _compare_local(config, servers, mine, own, result.logprobs, info),
    }
    parts = distributed.Reduce(info).gather(local)
    summary = _summarise(config, parts, seconds, specs, active, named_paths, info)
    if info.is_main:
        summary = _write(config, parts, specs, named_paths["reference"], info, summary)
    distributed.barrier()
    return summary


def _check_models_and_rows(
    config: ScoreConfig, named_paths: dict[str, str], active: list[TeacherSpec]
) -> tuple[list[Row], dict[str, Any], dict[str, list[list[int]]]]:
    """Every model directory is a causal-LM config, every tokenizer matches the student's (and
    frames a chat response as it does); the rows are valid. Also returns the tokenizers by name
    (served teachers: the student's, checked against their servers) and each context teacher's
    prompt ids per row (:func:`context_prompts`)."""
    configs = {name: models.load_causal_lm_config(path) for name, path in named_paths.items()}
    student_tok = models.load_tokenizer(config.student)
    toks: dict[str, Any] = {"student": student_tok}
    framed = config.template == "chat" and bool(getattr(student_tok, "chat_template", None))
    for name, path in named_paths.items():
        if name == "student":
            continue
        toks[name] = student_tok if path == config.student else models.load_tokenizer(path)
        if toks[name] is not student_tok:
            models.check_same_tokenizer(student_tok, toks[name], name)
            if framed:
                check_framing(student_tok, toks[name], name, "chat")
    vocab = min(int(c.vocab_size) for c in configs.values() if getattr(c, "vocab_size", None))
    limits = [m for m in (models.max_positions(c) for c in configs.values()) if m]
    limit = min(limits) if limits else None
    rows = read_score_rows(config.input, student_tok, vocab, limit, config.template)
    contexts = load_contexts(config.teacher_prompt, [s.name for s in _all_specs(config)])
    contexts = {n: c for n, c in contexts.items() if n in {s.name for s in active}}
    renderer = ContextRenderer(
        contexts, {n: toks.get(n, student_tok) for n in contexts}, config.template
    )
    return rows, toks, context_prompts(renderer, rows, str(config.input), limit)


def _all_specs(config: ScoreConfig) -> list[TeacherSpec]:
    return build_teacher_specs(
        config.expert, config.anti_expert, config.lambdas, config.teachers, config.served_teachers
    )


def _connect(
    config: ScoreConfig,
    active: list[TeacherSpec],
    tokenizer: Any,
    rows: list[Row],
    own: dict[str, list[list[int]]],
) -> dict[str, served.ServedTeacher]:
    """The served teachers, checked against the student's tokenizer and the longest row (with
    a context teacher's own prompts)."""
    settings = served.ServerSettings(
        config.teacher_timeout_s, config.teacher_retries, config.teacher_max_inflight_tokens
    )
    servers = {s.name: served.ServedTeacher(s.name, s.urls, settings) for s in active if s.served}
    longest = max(len(r.prompt_ids) + len(r.response_ids) for r in rows)
    for prompts in own.values():
        longest = max([longest] + [len(p) + len(r.response_ids) for p, r in zip(prompts, rows)])
    served.connect(servers, tokenizer, longest)
    return servers


def _placement(
    config: ScoreConfig, active: list[TeacherSpec]
) -> tuple[distributed.DistInfo, dict[str, int]]:
    """This process's rank and device, and which rank hosts each teacher (``shard`` only)."""
    if config.placement != "shard":
        return distributed.DistInfo(device=distributed.pick_device(config.device)), {}
    info = distributed.init_distributed(config.device)
    return info, distributed.round_robin_owners([s.name for s in active], info.world_size)


def _load_scorer(
    config: ScoreConfig,
    named_paths: dict[str, str],
    info: distributed.DistInfo,
    owner: dict[str, int],
    servers: dict[str, served.ServedTeacher],
) -> Scorer:
    """Each rank loads the student, the reference and the teachers it hosts (served: none)."""
    attn = models.default_attn_implementation(info.device)
    load_device = "cpu" if config.placement == "offload" else info.device
    loaded: dict[str, torch.nn.Module] = {}
    by_path: dict[str, torch.nn.Module] = {}  # a model path is loaded once (context teachers)
    for name, path in named_paths.items():
        if name == "reference" and path == config.student:
            continue  # the student's numbers are reused
        if owner.get(name, info.rank) != info.rank:
            continue
        if path not in by_path:
            by_path[path] = models.load_causal_lm(path, config.dtype, load_device, attn)
        loaded[name] = by_path[path]
    return Scorer(
        loaded,
        placement="local" if config.placement == "server" else config.placement,
        device=info.device,
        token_budget=config.token_budget,
        chunk_size=config.chunk_size,
        temperature=config.temperature,
        teacher_owner=owner or None,
        packing=config.packing,
        servers=servers,
    )


def _compare_local(
    config: ScoreConfig,
    servers: dict[str, served.ServedTeacher],
    rows: list[Row],
    own: dict[str, list[list[int]]],
    logprobs: dict[str, list[torch.Tensor]],
    info: distributed.DistInfo,
) -> dict[str, tuple[float, float, int]]:
    """``{teacher: (max |d|, Σ |d|, tokens)}``, d = served − local log-prob, over this rank's
    rows; each served teacher is loaded from the model path its server reports, one at a time."""
    if not config.compare_local:
        return {}
    out: dict[str, tuple[float, float, int]] = {}
    for name, teacher in servers.items():
        model = models.load_causal_lm(teacher.model_root, config.dtype, info.device)
        scorer = Scorer(
            {name: model},
            device=info.device,
            token_budget=config.token_budget,
            chunk_size=config.chunk_size,
            packing=config.packing,
        )
        local = scorer.score(
            [r.prompt_ids for r in rows], [r.response_ids for r in rows], prompts_of=own
        )
        diff = torch.cat([(a - b).abs() for a, b in zip(logprobs[name], local.logprobs[name])])
        out[name] = (float(diff.max()) if len(diff) else 0.0, float(diff.sum()), len(diff))
        del model, scorer
    return out


def _write(
    config: ScoreConfig,
    parts: list[Any],
    specs: list[TeacherSpec],
    reference: str,
    info: distributed.DistInfo,
    summary: ScoreSummary,
) -> ScoreSummary:
    """Rank 0: the output rows in input order, and the resolved config next to them."""
    all_rows = sorted((r for p in parts for r in p["rows"]), key=lambda r: r[0])
    out = write_rows(config.output, [r for _, r in all_rows])
    resolved = dataclasses.replace(
        config,
        reference=reference,
        expert=None,
        anti_expert=None,
        lambdas=None,
        teachers=[f"{s.name}={s.path}:{s.lam!r}" for s in specs],
        served_teachers=[],
        compare_local=False,
        device=str(info.device) if config.placement != "shard" else config.device,
    )
    cfg = write_resolved(resolved, f"{config.output}.config.yaml")
    return dataclasses.replace(summary, output=out, config_path=cfg)


def _rewards(
    config: ScoreConfig,
    specs: list[TeacherSpec],
    active: list[TeacherSpec],
    table: dict,
    rows: list[Row],
    logprobs: dict[str, list[torch.Tensor]],
) -> tuple[list[tuple[int, dict]], Signal]:
    """The output rows and the training signal (:func:`training_signal`, the trainer's own)."""
    try:
        signal = training_signal(
            logprobs["student"],
            logprobs["reference"],
            {s.name: logprobs[s.name] for s in active},
            specs,
            domains=[r.data.get("domain") for r in rows],
            table=table,
            normalization=config.teacher_normalization,
            beta=config.beta,
        )
    except ValueError as e:
        raise DataError(f"{config.input}: {e} (a model produced non-finite log-probs)") from e
    names = ["student", "reference"] + [s.name for s in active]
    out = []
    for b, row in enumerate(rows):
        n = len(row.response_ids)
        data = dict(row.data)
        data["logprobs"] = {name: logprobs[name][b].tolist() for name in names}
        data["reward"] = signal.reward_BT[b, :n].tolist()
        data["advantage"] = signal.adv_BT[b, :n].tolist()
        out.append((row.number, data))
    return out, signal


def _summarise(config, parts, seconds, specs, active, named_paths, info) -> ScoreSummary:
    tokens = sum(p["tokens"] for p in parts)
    model_tokens = sum(p["stats"]["model_tokens"] for p in parts)
    processed = [p["stats"] for p in parts]
    peak: dict[str, float] = {}
    for rank, st in enumerate(processed):
        for dev, gb in st["peak_mem_gb"].items():
            peak[f"rank{rank}:{dev}" if info.distributed else dev] = gb
    pad = sum(s["padding_fraction"] * s["model_tokens"] for s in processed) / max(model_tokens, 1)
    return ScoreSummary(
        output=None,
        config_path=None,
        rows=sum(len(p["rows"]) for p in parts),
        tokens=tokens,
        seconds=seconds,
        tokens_per_s=model_tokens / seconds if seconds > 0 else 0.0,
        padding_fraction=pad,
        peak_mem_gb=peak,
        reward_mean=sum(p["reward_sum"] for p in parts) / max(tokens, 1),
        advantage_mean=sum(p["adv_sum"] for p in parts) / max(tokens, 1),
        logratio_mean={
            s.name: sum(p["ratio_sums"][s.name] for p in parts) / max(tokens, 1) for s in active
        },
        teachers=list(specs),
        model_names=list(named_paths) + [s.name for s in active if s.served],
        compare=_merge_compare(parts),
    )


def _merge_compare(parts: list[Any]) -> dict[str, tuple[float, float]]:
    """Every rank's ``(max, sum, count)`` → ``{teacher: (max |d|, mean |d|)}``."""
    names = parts[0]["compare"].keys() if parts else []
    out = {}
    for name in names:
        mx = max(p["compare"][name][0] for p in parts)
        n = sum(p["compare"][name][2] for p in parts)
        out[name] = (mx, sum(p["compare"][name][1] for p in parts) / max(n, 1))
    return out

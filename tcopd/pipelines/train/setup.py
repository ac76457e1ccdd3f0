"""Set-up: everything a training step uses, built once (models, scorer, engines, grader, data).

Choices:

- π_ref defaults to a frozen copy of the student's initial weights. It is not loaded at all when
  its terms cancel in the advantage (``Σ_k w_k = β`` in every domain, e.g. OPD) and
  ``score_reference`` is ``auto``: the score phase then stands π_old in for it.
- Only teachers with a non-zero λ (for some domain) are loaded (:func:`active_teachers`); with
  ``teacher_placement="shard"`` each lives on one rank, with ``offload`` in CPU memory.
- ``--lora``: the student carries LoRA adapters (``runtime/models/lora.py``), only they are trained.
  π_ref (unless ``--reference`` names another model) is then *the same module with its adapters
  disabled*: no copy is made; the score phase scores it inside ``lora.reference_forward`` through
  ``Trainer.adapter_reference``, a scorer holding the policy under the name ``reference``.
- Dropout is off in the student, its LoRA branches included (``disable_dropout``): π_old is
  scored in eval mode and π_θ in train mode, and with dropout live their ratio would not be 1
  before a step and the clip fraction would measure dropout noise (verl and TRL do the same).
- The HF rollout engine samples with the training module itself (nothing to sync) — except
  under ZeRO-3, where the module's parameters are partitioned and every forward is a
  collective: it then samples from a full copy that is synced after every step — and with
  ``--max-staleness 1``, where it generates the next batch while the module trains (ahead.py).
  vLLM always holds its own copy (``needs_weight_sync``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tcopd.core.objective import PPOLoss
from tcopd.core.signal import reference_cancels
from tcopd.core.teachers import (
    TeacherSpec,
    active_teachers,
    build_teacher_specs,
    check_domains,
    validate_lambda_table,
)
from tcopd.errors import ConfigError
from tcopd.pipelines.train.config import TrainConfig
from tcopd.pipelines.train.data import Prompts, load_prompts
from tcopd.pipelines.train.engines import rollout_engine
from tcopd.pipelines.train.update import UpdateSettings
from tcopd.runtime.data.prompts import check_framing
from tcopd.runtime.evaluation.grading import Grader
from tcopd.runtime.generation.rollout import RolloutEngine
from tcopd.runtime.models import lora
from tcopd.runtime.models.loading import (
    check_same_tokenizer,
    disable_dropout,
    load_causal_lm,
    load_tokenizer,
)
from tcopd.runtime.scoring import served
from tcopd.runtime.scoring.contexts import Context, ContextRenderer, load_contexts
from tcopd.runtime.scoring.forward import output_head
from tcopd.runtime.scoring.scorer import Scorer
from tcopd.runtime.training import distributed
from tcopd.runtime.training.distributed import DistInfo, Reduce, available_memory
from tcopd.runtime.training.learner import Learner

Emit = Callable[..., None]
log = logging.getLogger(__name__)


@dataclass
class Trainer:
    """The components of a run; the step's phases read what they need from here."""

    cfg: TrainConfig
    dist: DistInfo
    reduce: Reduce
    emit: Emit  # progress events, rank 0 only
    tokenizer: Any
    specs: list[TeacherSpec]  # every configured teacher
    table: dict[str, dict[str, float]]  # the per-domain λ table, validated
    learner: Learner
    policy: torch.nn.Module  # π_old is scored on it: the training module (its copy under ZeRO-3)
    scorer: Scorer  # π_ref (unless it cancels) and the active teachers
    contexts: ContextRenderer | None  # the context teachers' own prompts (--teacher-prompt)
    grader: Grader | None  # None: --no-grade and nothing to evaluate
    rollout: RolloutEngine
    data: Prompts
    eval_data: Prompts | None
    loss_fn: PPOLoss
    update: UpdateSettings
    scores_reference: bool  # False: π_ref cancels in the advantage and is not scored
    lora_student: lora.LoraStudent | None = None  # --lora: the PeftModel around learner.module
    # --lora without --reference: π_ref = the policy with adapters off (score.py), not a copy
    adapter_reference: Scorer | None = None
    # the tokenizer's size when the output heads have more rows (a padded vocabulary): the
    # dense loss leaves the rows past it out (core/dense.py)
    vocab_size: int | None = None
    head_rows: int = 0  # the student's output head's rows (dense loss: served top-k ids below it)


def teachers_of(cfg: TrainConfig) -> tuple[list[TeacherSpec], dict, list[TeacherSpec]]:
    """``(all specs, validated λ table, active specs)`` of a config (cheap: no model loaded).

    Served teachers (URLs) are refused here, before anything loads, where they cannot be scored
    correctly: at a rollout temperature ≠ 1 (a server's log-probs are raw, τ = 1);
    ``teacher_placement: server`` needs every teacher served. With the dense loss a served
    teacher gives its top ``served_top_k`` per position (core/dense_support.py).
    """
    specs = build_teacher_specs(
        cfg.expert,
        cfg.anti_expert,
        cfg.lambdas,
        cfg.teacher,
        cfg.served_teachers,
        table_given=bool(cfg.lambda_table),
    )
    table = validate_lambda_table(cfg.lambda_table, specs)
    active = active_teachers(specs, table)
    remote = [s.name for s in active if s.served]
    if remote and cfg.temperature != 1.0:
        raise ConfigError(
            f"served teacher {remote[0]!r} gives log-probs at temperature 1, the rollouts use "
            f"{cfg.temperature:g}: use --temperature 1 or a local teacher (docs/serving.md)"
        )
    if remote and cfg.loss == "dense" and cfg.max_staleness:
        # its sampled-token term would need the weight π_old/μ too (docs/algorithm.md)
        raise ConfigError(
            f"--max-staleness 1 with --loss dense and served teacher {remote[0]!r} is not "
            "supported: use a local teacher, --loss sampled, or --max-staleness 0"
        )
    contexts = contexts_of(cfg, specs)
    if contexts and cfg.teacher_placement == "shard":
        raise ConfigError(
            f"context teacher {next(iter(contexts))!r} (--teacher-prompt): placement shard "
            "cannot score it; use --teacher-placement local or offload, or serve it"
        )
    local = [s.name for s in active if not s.served]
    if cfg.teacher_placement == "server" and local:
        raise ConfigError(
            f"--teacher-placement server: teacher {local[0]!r} is a path, not a server URL "
            "(give its URL, or use another placement: URL teachers are served under any)"
        )
    return specs, table, active


def contexts_of(cfg: TrainConfig, specs: list[TeacherSpec]) -> dict[str, Context]:
    """The ``--teacher-prompt`` contexts, each file read and checked (no model loaded)."""
    return load_contexts(cfg.teacher_prompt, [s.name for s in specs])


def model_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    if cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32


def build_trainer(cfg: TrainConfig, dist: DistInfo, emit: Emit) -> Trainer:
    """Load the models and start the engines (see the module docstring)."""
    specs, table, active = teachers_of(cfg)
    if cfg.batch_size % dist.world_size:
        raise ConfigError(
            f"batch_size {cfg.batch_size} is not divisible by the {dist.world_size} ranks"
        )
    dtype = model_dtype(cfg, dist.device)
    emit("loading models")
    tokenizer = load_tokenizer(cfg.student)
    data, eval_data = _prompts(cfg, tokenizer)
    check_domains(data.domains, table, specs, str(cfg.data))
    student, adapted = _student(cfg, dtype, dist.device)
    skip_ref = cfg.score_reference == "auto" and reference_cancels(
        specs, table, cfg.teacher_normalization, cfg.beta
    )
    shared_ref = adapted is not None and not cfg.reference and not skip_ref
    scorer, renderer = _scorer_and_contexts(
        cfg, dist, tokenizer, student, (specs, active), dtype, skip_ref or shared_ref
    )
    vocab, rows = None, 0
    if cfg.loss == "dense":
        check_dense(cfg, dist, student, scorer, extra_models=int(shared_ref))
        vocab = _real_vocabulary(tokenizer, student)
        found = output_head(student)
        rows = found[1].weight.shape[0] if found is not None else 0
    # see the module docstring
    separate = cfg.engine == "hf" and (cfg.zero_stage == 3 or cfg.max_staleness > 0)
    _check_shared_copy(cfg, separate, shared_ref)
    rollout_copy = copy.deepcopy(student).requires_grad_(False) if separate else None
    emit("starting DeepSpeed")
    learner = _learner(cfg, student, dtype)
    # π_old is scored with the copy under ZeRO-3 only (the module's parameters are partitioned)
    policy = rollout_copy if rollout_copy is not None and cfg.zero_stage == 3 else learner.module
    grade = cfg.grade or eval_data is not None
    return Trainer(
        cfg=cfg,
        dist=dist,
        reduce=Reduce(dist),
        emit=emit,
        tokenizer=tokenizer,
        specs=specs,
        table=table,
        learner=learner,
        policy=policy,
        scorer=scorer,
        contexts=renderer,
        rollout=rollout_engine(
            cfg, dist, tokenizer, rollout_copy if separate else policy, separate, dtype
        ),
        grader=_grader(cfg, data) if grade else None,
        data=data,
        eval_data=eval_data,
        loss_fn=PPOLoss(cfg.clip_eps, cfg.clip_eps_high, cfg.dual_clip, cfg.aggregation),
        update=UpdateSettings(
            cfg.ppo_epochs,
            cfg.mini_batches,
            cfg.train_token_budget,
            cfg.chunk_size,
            cfg.temperature,
        ),
        scores_reference=not skip_ref,
        lora_student=adapted,
        adapter_reference=_adapter_reference(cfg, dist, policy) if shared_ref else None,
        vocab_size=vocab,
        head_rows=rows,
    )


def _grader(cfg: TrainConfig, data: Prompts) -> Grader:
    """The grading pool, reading answers as the training file's rows say."""
    return Grader(cfg.grader_workers, cfg.grade_timeout_s, answer_format=data.answer_format)


def _check_shared_copy(cfg: TrainConfig, separate: bool, shared_ref: bool) -> None:
    """Under ZeRO-3 π_old and a shared π_ref are scored on the HF engine's copy; one step off
    it samples the next batch meanwhile, and π_ref's adapters-off forward would change it."""
    if separate and cfg.zero_stage == 3 and cfg.max_staleness and shared_ref:
        raise ConfigError(
            "--max-staleness 1 with --engine hf, --zero-stage 3 and --lora needs --reference "
            "(π_ref is otherwise the sampler's own weights with adapters off); or use ZeRO 0-2"
        )


def _real_vocabulary(tokenizer: Any, student: torch.nn.Module) -> int | None:
    """The tokenizer's size when the student's head has more rows (padding), else None."""
    found = output_head(student)
    rows = found[1].weight.shape[0] if found is not None else None
    return len(tokenizer) if rows is not None and len(tokenizer) < rows else None


def _prompts(cfg: TrainConfig, tokenizer: Any) -> tuple[Prompts, Prompts | None]:
    """The training prompts and the held-out ones (``--eval-data``), tokenized and filtered."""
    data = load_prompts(cfg.data, tokenizer, cfg.template, cfg.max_prompt_tokens)
    if not cfg.eval_data:
        return data, None
    held_out = load_prompts(cfg.eval_data, tokenizer, cfg.template, cfg.max_prompt_tokens)
    if held_out.answer_format != data.answer_format:
        raise ConfigError(
            f"--eval-data {cfg.eval_data} reads answers as {held_out.answer_format}, --data "
            f"{cfg.data} as {data.answer_format} (reward_model.answer_format): use one format"
        )
    return data, held_out


def _student(
    cfg: TrainConfig, dtype: torch.dtype, device: torch.device
) -> tuple[torch.nn.Module, lora.LoraStudent | None]:
    """The student (with LoRA layers under ``--lora``) and, with ``--lora``, its PeftModel."""
    student = load_causal_lm(cfg.student, dtype=dtype, device=device)
    adapted = None
    if cfg.lora:
        settings = lora.LoraSettings(
            cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules
        )
        torch.manual_seed(cfg.seed)  # peft draws A's initial values: the same run, the same A
        adapted = lora.wrap(student, settings, str(cfg.student))
        student = adapted.model
    off = disable_dropout(student)
    if off:
        log.info("dropout off for the RL update: %s", ", ".join(off))
    if cfg.gradient_checkpointing:
        student.gradient_checkpointing_enable()
        student.config.use_cache = False
        if adapted is not None:  # frozen embeddings: checkpointed blocks need inputs with grad
            student.enable_input_require_grads()
    return student, adapted


def _adapter_reference(cfg: TrainConfig, dist: DistInfo, policy: torch.nn.Module) -> Scorer:
    """π_ref for ``--lora``: the policy itself (scored with its adapters disabled, score.py)."""
    return Scorer(
        {"reference": policy},
        placement="local",
        device=dist.device,
        token_budget=cfg.score_token_budget,
        chunk_size=cfg.chunk_size,
        temperature=cfg.temperature,
    )


def _scorer_and_contexts(
    cfg: TrainConfig,
    dist: DistInfo,
    tokenizer: Any,
    student: torch.nn.Module,
    teachers: tuple[list[TeacherSpec], list[TeacherSpec]],
    dtype: torch.dtype,
    skip_ref: bool,
) -> tuple[Scorer, ContextRenderer | None]:
    """The scorer and, with ``--teacher-prompt``, the renderer of the context teachers' prompts
    (``teachers``: every configured teacher, the active ones)."""
    specs, active = teachers
    contexts = contexts_of(cfg, specs)
    scorer, toks = _scorer(cfg, dist, tokenizer, student, active, dtype, not skip_ref, contexts)
    contexts = {n: c for n, c in contexts.items() if n in scorer.names}
    return scorer, ContextRenderer(contexts, toks, cfg.template) if contexts else None


def _learner(cfg: TrainConfig, student: torch.nn.Module, dtype: torch.dtype) -> Learner:
    torch.manual_seed(cfg.seed)
    return Learner(
        student,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        zero_stage=cfg.zero_stage,
        bf16=dtype == torch.bfloat16,
        grad_clip=cfg.grad_clip,
        offload_optimizer=cfg.offload_optimizer,
        offload_params=cfg.offload_params,
    )


def _scorer(
    cfg: TrainConfig,
    dist: DistInfo,
    tokenizer: Any,
    student: torch.nn.Module,
    active: list[TeacherSpec],
    dtype: torch.dtype,
    with_reference: bool,
    contexts: dict[str, Context],
) -> tuple[Scorer, dict[str, Any]]:
    """π_ref (when needed) and the active teachers, placed as ``teacher_placement`` says, and
    each teacher's tokenizer (a served one: the student's). Teachers given by URL are served
    (checked now: :func:`served.connect`, against the student's tokenizer and the longest
    possible sequence, ``max_prompt_tokens + max_response_tokens``)."""
    settings = served.ServerSettings(
        cfg.teacher_timeout_s, cfg.teacher_retries, cfg.teacher_max_inflight_tokens
    )
    servers = {s.name: served.ServedTeacher(s.name, s.urls, settings) for s in active if s.served}
    top_k = cfg.served_top_k if cfg.loss == "dense" else 0
    served.connect(servers, tokenizer, _longest_teacher_sequence(cfg, servers, contexts), top_k)
    placement = "local" if cfg.teacher_placement == "server" else cfg.teacher_placement
    models: dict[str, torch.nn.Module] = {}
    if with_reference and cfg.reference:
        check_same_tokenizer(tokenizer, load_tokenizer(cfg.reference), "reference")
        models["reference"] = load_causal_lm(cfg.reference, dtype=dtype, device=dist.device)
    elif with_reference:
        models["reference"] = copy.deepcopy(student)
    for m in models.values():
        m.requires_grad_(False)
    local = [s for s in active if not s.served]
    owner: dict[str, int] = {}
    if placement == "shard":
        owner = distributed.round_robin_owners([s.name for s in local], dist.world_size)
    teachers, toks = _teacher_models(cfg, dist, tokenizer, local, owner, dtype, models)
    scorer = Scorer(
        {**models, **teachers},
        placement=placement,
        device=dist.device,
        token_budget=cfg.score_token_budget,
        chunk_size=cfg.chunk_size,
        temperature=cfg.temperature,
        teacher_owner=owner or None,
        servers=servers,
    )
    if placement == "offload" and "reference" in models:
        models["reference"].to(dist.device)  # needed every step; only teachers are offloaded
    return scorer, {**toks, **{name: tokenizer for name in servers}}


def _teacher_models(
    cfg: TrainConfig,
    dist: DistInfo,
    tokenizer: Any,
    local: list[TeacherSpec],
    owner: dict[str, int],
    dtype: torch.dtype,
    models: dict[str, torch.nn.Module],
) -> tuple[dict[str, torch.nn.Module], dict[str, Any]]:
    """Load each local teacher this rank hosts, each model path once: teachers with one path
    share one module (two context teachers of one model), and a teacher at the student's path
    shares the frozen π_ref copy when there is one. Each tokenizer is checked against the
    student's (vocabulary, and the chat template's framing of the response)."""
    place = torch.device("cpu") if cfg.teacher_placement == "offload" else dist.device
    loaded: dict[str, torch.nn.Module] = {}
    if "reference" in models and not cfg.reference:
        loaded[_same_path(str(cfg.student))] = models["reference"]
    teachers: dict[str, torch.nn.Module] = {}
    toks: dict[str, Any] = {}
    for spec in local:
        toks[spec.name] = load_tokenizer(spec.path)
        check_same_tokenizer(tokenizer, toks[spec.name], spec.name)
        check_framing(tokenizer, toks[spec.name], spec.name, cfg.template)
        if owner.get(spec.name, dist.rank) != dist.rank:
            continue
        key = _same_path(spec.path)
        if key not in loaded:
            loaded[key] = load_causal_lm(spec.path, dtype=dtype, device=place)
            loaded[key].requires_grad_(False)
        teachers[spec.name] = loaded[key]
    return teachers, toks


def _longest_teacher_sequence(
    cfg: TrainConfig, servers: dict[str, Any], contexts: dict[str, Context]
) -> int:
    """The longest sequence a served teacher may be asked to score: the longest prompt, plus a
    served context teacher's context (its characters, an upper bound of its tokens, plus 16
    per message for the template's markup), plus the longest response."""
    extra = max(
        (sum(len(c) + 16 for _, c in ctx.messages) for n, ctx in contexts.items() if n in servers),
        default=0,
    )
    return cfg.max_prompt_tokens + extra + cfg.max_response_tokens


def _same_path(path: str) -> str:
    """A model path as a key: two spellings of one local directory are one model."""
    p = Path(path).expanduser()
    return str(p.resolve()) if p.exists() else path


def check_dense(
    cfg: TrainConfig,
    dist: DistInfo,
    student: torch.nn.Module,
    scorer: Scorer,
    extra_models: int = 0,
) -> None:
    """Before any step: every model exposes a head over the student's vocabulary, and what the
    dense loss holds fits (``extra_models``: models scored outside ``scorer``, the LoRA π_ref):

    - on the device, one chunk's ``chunk × V × (K + 2)`` float32 logits (×3: values, softmaxes,
      gradients) and one micro-batch's stored hidden states (``train_token_budget × ΣH``);
    - in host memory, the stored hidden states of a whole step on this rank (every response at
      ``max_response_tokens``: ``responses × max_response_tokens × ΣH``, in the model dtype),
      which the scorer keeps there for the update (on CPU both are the same memory).
    """
    found = output_head(student)
    if found is None:
        raise ConfigError("--loss dense needs a student with a base model and a linear lm_head")
    V, H_student = found[1].weight.shape
    widths = []
    for name, model in scorer.models.items():
        head = output_head(model)
        if head is None or head[1].weight.shape[0] != V:
            got = "no linear head" if head is None else f"vocabulary {head[1].weight.shape[0]}"
            raise ConfigError(f"--loss dense: {name} has {got}, the student's vocabulary is {V}")
        widths.append(head[1].weight.shape[1])
    widths += [H_student] * extra_models
    n_models = len(scorer.models) + extra_models + 2
    item = torch.finfo(model_dtype(cfg, dist.device)).bits // 8
    chunk = 3 * 4 * cfg.chunk_size * V * n_models
    micro = cfg.train_token_budget * sum(widths) * item
    responses = cfg.batch_size // dist.world_size * cfg.samples_per_prompt
    stored = responses * cfg.max_response_tokens * sum(widths) * item
    sizes = (
        f"one chunk ~{chunk / 1e9:.1f} GB ({cfg.chunk_size} positions × vocabulary {V} × "
        f"{n_models} models) and one micro-batch's hidden states ~{micro / 1e9:.1f} GB"
    )
    kept = (
        f"the step's stored hidden states ~{stored / 1e9:.1f} GB ({responses} responses × "
        f"{cfg.max_response_tokens} tokens × hidden {sum(widths)}, {len(widths)} models)"
    )
    smaller = "lower --batch-size, --samples-per-prompt or --max-response-tokens, or use more ranks"
    if dist.device.type == "cuda":
        free = available_memory(dist.device)
        if chunk + micro > free:
            raise ConfigError(
                f"--loss dense: {sizes} need more than the {free / 1e9:.1f} GB free on "
                f"{dist.device}: lower --chunk-size or --train-token-budget"
            )
        need, text = stored, kept
    else:  # one memory for everything
        need, text = chunk + micro + stored, f"{sizes}, with {kept},"
        smaller = f"lower --chunk-size, or {smaller[0].lower()}{smaller[1:]}"
    host = available_memory(torch.device("cpu"))
    if need > host:
        raise ConfigError(
            f"--loss dense: {text} need more than the {host / 1e9:.1f} GB of memory available: "
            f"{smaller}"
        )

"""Settings of ``tcopd train`` (a frozen dataclass; YAML + flags, see tcopd/config.py) and recipes.

The dataclass defaults are tcopd's own (docs/train.md has the table with the source of every
value). A *recipe* is a named bundle of settings put under whatever the user sets explicitly:

- ``toy`` (what ``--toy`` uses): sized for a laptop CPU on the toy world;
- ``paper``: the TC-OPD paper's §4 settings (batch 128, 50 steps, 16k tokens, BF16, several
  off-policy updates per batch, micro-batch 1 ⇒ per-sequence averaging), with G-OPD's script
  values where the paper is silent;
- ``gopd``: what G-OPD's released scripts run (one on-policy update per batch of 1024 prompts
  × 1 sample, lr 1e-5, weight decay 0.01, per-sequence averaging).

The resolved ``config.yaml`` of a run records the recipe and every resulting value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from tcopd.config import build, field, field_defaults, read_yaml
from tcopd.errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    out: str = field(help="Run directory (config, metrics.jsonl, checkpoints).")
    student: str | None = field(None, help="Student model (HF directory or Hub id).")
    reference: str | None = field(
        None, help="Reference π_ref (default: the student's initial weights)."
    )
    expert: str | None = field(None, help="Expert teacher, named 'expert'.")
    anti_expert: str | None = field(None, help="Anti-expert teacher, named 'anti_expert'.")
    lambdas: str | None = field(
        None, help="λ for expert, anti-expert (and λ-less --teacher), e.g. '1.5,-0.5'."
    )
    teacher: list[str] = field([], help="Extra teachers NAME=PATH:LAMBDA.")
    teacher_prompt: list[str] = field(
        [],
        help="A teacher's own context NAME=FILE (JSON/YAML chat messages placed before each "
        "conversation): on-policy context distillation (docs/train.md).",
    )
    lambda_table: dict = field(
        {}, help="Multi-task λ table {domain: {teacher: λ}}; a row overrides λ for that domain."
    )
    teacher_normalization: Literal["active", "all", "none"] = field(
        "active", help="K in 1/K: active (λ≠0), all, none."
    )
    data: str | None = field(None, help="Training prompts (prepared parquet/jsonl).")
    eval_data: str | None = field(None, help="Held-out prompts for periodic evaluation.")
    toy: bool = field(
        False,
        help="Use the toy world's student, teachers and data (built if absent); implies --recipe toy.",
    )
    recipe: Literal["toy", "paper", "gopd"] | None = field(
        None, help="Named settings under your own: toy, paper, gopd (docs/train.md)."
    )
    template: Literal["chat", "plain"] = field(
        "chat", help="Prompt template: the tokenizer's chat template or plain text."
    )
    steps: int = field(50, help="Training steps (batches of rollouts).")
    batch_size: int = field(128, help="Prompts per step (over all ranks).")
    samples_per_prompt: int = field(4, help="Rollouts per prompt.")
    max_response_tokens: int = field(16384, help="Maximum new tokens per rollout.")
    max_prompt_tokens: int = field(2048, help="Prompts longer than this are skipped (counted).")
    temperature: float = field(
        1.0, help="Rollout temperature τ; every model is scored at τ too (docs/algorithm.md)."
    )
    top_p: float = field(
        1.0, help="Rollout top-p; training needs 1 (the trainer scores the full tempered policy)."
    )
    lr: float = field(1e-6, help="AdamW learning rate.")
    weight_decay: float = field(0.0, help="AdamW weight decay.")
    grad_clip: float = field(1.0, help="Gradient-norm clipping (0: off).")
    ppo_epochs: int = field(1, help="Passes over each batch of rollouts.")
    mini_batches: int = field(4, help="Optimizer steps per pass (off-policy: >1).")
    clip_eps: float = field(0.2, help="PPO clip ε.")
    clip_eps_high: float | None = field(None, help="Upper clip (default: ε).")
    dual_clip: float | None = field(
        3.0, help="Dual-clip c (> 1) for negative advantages; off: dual_clip: null in the YAML."
    )
    beta: float = field(
        1.0, help="KL coefficient β in A = r − β(lp_old − lp_ref): >= 0 (sampled), > 0 (dense)."
    )
    score_reference: Literal["auto", "always"] = field(
        "auto",
        help="auto: skip scoring π_ref when its terms cancel (Σ_k w_k = β, e.g. OPD); always: score it.",
    )
    loss: Literal["sampled", "dense"] = field(
        "sampled",
        help="sampled: the paper's per-token estimator (PPO clipped); dense: β·KL(π_θ ‖ p*) over "
        "the whole vocabulary at every position (docs/algorithm.md).",
    )
    aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"] = field(
        "token-mean", help="Loss aggregation."
    )
    truncated_is: bool = field(
        True,
        help="Truncated IS weight min(exp(lp_old − lp_rollout), cap) when the engine gives log-probs.",
    )
    is_cap: float = field(5.0, help="Cap of the truncated IS weight.")
    outcome_weight: float = field(
        0.0, help="w in w·(R − mean R of the prompt's samples) added to A."
    )
    eval_every: int = field(
        0, help="Evaluate every N steps (0: only at the end if eval_data is set)."
    )
    eval_n: int = field(4, help="Samples per eval prompt.")
    eval_prompts: int = field(0, help="Evaluate on the first N eval prompts (0: all).")
    save_every: int = field(10, help="Checkpoint every N steps (and at the end).")
    keep_checkpoints: int = field(2, help="Complete checkpoints to keep.")
    seed: int = field(0, help="Seed for data order, sampling and initialisation.")
    engine: Literal["hf", "vllm"] = field("hf", help="Rollout engine.")
    vllm_gpu_memory_utilization: float = field(0.5, help="vLLM's share of GPU memory.")
    vllm_tensor_parallel_size: int = field(1, help="vLLM tensor-parallel size.")
    vllm_sleep: bool = field(
        True,
        help="Put vLLM to sleep during scoring and the update (frees its KV cache; CUDA only).",
    )
    max_staleness: int = field(
        0,
        help="0: generate, score and update one after another; 1: generate the next batch while "
        "this one is scored and trained on (one step off, corrected by the truncated IS weight; "
        "docs/train.md).",
    )
    zero_stage: int = field(2, help="DeepSpeed ZeRO stage (0-3).")
    offload_optimizer: bool = field(False, help="ZeRO optimizer state offload to CPU.")
    offload_params: bool = field(False, help="ZeRO-3 parameter offload to CPU.")
    gradient_checkpointing: bool = field(False, help="Recompute activations in backward.")
    lora: bool = field(
        False,
        help="Train LoRA adapters (peft) instead of every weight; π_ref is the student with its "
        "adapters off, unless --reference is given (docs/lora.md).",
    )
    lora_rank: int = field(16, help="LoRA rank r.")
    lora_alpha: float = field(32.0, help="LoRA alpha (the update is scaled by alpha / r).")
    lora_dropout: float = field(
        0.0,
        help="Must be 0 (kept so that configs naming it still load): every dropout, the LoRA "
        "branch's included, is off in the RL update, where π_θ / π_old must be 1 before a step "
        "(docs/lora.md).",
    )
    lora_target_modules: str = field(
        "all-linear",
        help="Modules that get adapters: all-linear (every linear layer but the output head) or "
        "comma-separated module names (q_proj,v_proj).",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = field(
        "auto", help="auto: bf16 on GPU, fp32 on CPU."
    )
    device: str | None = field(None, help="cpu, cuda (default: cuda if available).")
    teacher_placement: Literal["local", "offload", "shard", "server"] = field(
        "local",
        help="Where teachers given by path live (local, offload, shard); server: every teacher "
        "is a vLLM server URL (docs/serving.md). A URL teacher is served under any placement.",
    )
    served_teachers: list[dict] = field(
        [], help="Teachers on vLLM servers, [{name, url (one or a list), lam}] (docs/serving.md)."
    )
    teacher_timeout_s: float = field(300.0, help="Seconds per served-teacher scoring request.")
    teacher_retries: int = field(
        4, help="Retries of a failed served-teacher request (connection error, timeout, 5xx)."
    )
    teacher_max_inflight_tokens: int = field(
        65536,
        help="Tokens in flight per teacher server (prompt + response of unanswered requests).",
    )
    served_top_k: int = field(
        16,
        help="--loss dense with served teachers: each server gives its top k per position; the "
        "loss is exact on their common top k and sampled outside it, unbiased at every k "
        "(docs/algorithm.md). -1: whole rows (exact; small vocabularies, --max-logprobs -1).",
    )
    train_token_budget: int = field(16384, help="Tokens per training micro-batch (padded).")
    score_token_budget: int = field(32768, help="Tokens per scoring micro-batch.")
    rollout_token_budget: int = field(
        65536, help="rows × (prompt + max new tokens) per generate call (HF engine)."
    )
    chunk_size: int = field(
        512, help="Tokens per chunk of the output projection (log-probs without T×V logits)."
    )
    grade: bool = field(
        True, help="Grade rollouts (rollout_accuracy); --no-grade skips the grading pool's work."
    )
    grader_workers: int = field(2, help="math-verify worker processes.")
    grade_timeout_s: float = field(10.0, help="Per-sample grading limit (ungraded past it).")
    tensorboard: bool = field(False, help="Also log metrics to TensorBoard (RUN_DIR/tb).")

    def __post_init__(self) -> None:
        """Reject impossible values before anything is loaded or initialised."""
        self._check_ranges()
        self._check_sampling_and_beta()
        self._check_combinations()

    def _check_ranges(self) -> None:
        """Counts at least 1, rates > 0, switches and intervals >= 0."""
        positive = (
            "steps batch_size samples_per_prompt max_response_tokens max_prompt_tokens "
            "ppo_epochs mini_batches eval_n train_token_budget score_token_budget "
            "rollout_token_budget chunk_size grader_workers keep_checkpoints"
        ).split()
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "temperature", "is_cap", "clip_eps", "grade_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "grad_clip", "eval_every", "eval_prompts", "save_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.teacher_timeout_s <= 0 or self.teacher_retries < 0:
            raise ConfigError("teacher_timeout_s must be > 0 and teacher_retries >= 0")
        if self.served_top_k == 0 or self.served_top_k < -1:
            raise ConfigError(
                f"--served-top-k must be ≥ 1 or -1 (whole rows), got {self.served_top_k}"
            )
        if self.teacher_max_inflight_tokens < 1:
            raise ConfigError("teacher_max_inflight_tokens must be at least 1")
        if self.dual_clip is not None and self.dual_clip <= 1:
            raise ConfigError(f"dual_clip must be > 1 (or null: off), got {self.dual_clip}")
        self._check_lora()

    def _check_lora(self) -> None:
        """LoRA settings: r >= 1, alpha > 0, dropout in [0, 1), some target module."""
        if self.lora_rank < 1:
            raise ConfigError(f"--lora-rank must be at least 1, got {self.lora_rank}")
        if not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise ConfigError(f"--lora-alpha must be > 0, got {self.lora_alpha}")
        if self.lora_dropout != 0.0:
            raise ConfigError(
                f"--lora-dropout {self.lora_dropout:g}: dropout is off in the RL update (with it "
                "π_θ / π_old is not 1 before a step, and the clip fraction measures dropout "
                "noise); use 0 (docs/lora.md)"
            )
        if not self.lora_target_modules.strip(" ,"):
            raise ConfigError("--lora-target-modules is empty: all-linear or module names")

    def _check_sampling_and_beta(self) -> None:
        """top_p and β: values the trainer's math needs (docs/train.md, "Sampling and β")."""
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_p < 1.0:
            # The sampler's log-probs are those of the renormalised nucleus, the trainer's π_old
            # those of the full tempered policy: the IS weight would be ≈ the nucleus mass.
            raise ConfigError(
                f"--top-p {self.top_p}: training needs top_p = 1 (the trainer scores the full "
                "tempered policy; nucleus log-probs would bias the importance weights); use "
                "top_p < 1 only in eval (tcopd eval --top-p, tcopd sweep --eval-top-p)"
            )
        dense = self.loss == "dense"
        if not (math.isfinite(self.beta) and (self.beta > 0 if dense else self.beta >= 0)):
            # A = r − β(lp_old − lp_ref): β < 0 rewards moving away from π_ref; the dense
            # target log p* = log π_ref + r/β − log Z divides by β.
            raise ConfigError(
                f"--beta {self.beta}: β weighs KL(π_θ ‖ π_ref) and must be >= 0 with --loss "
                "sampled, > 0 with --loss dense (its target divides by β); this run has "
                f"--loss {self.loss}"
            )

    def _check_combinations(self) -> None:
        """Settings that are valid alone but not together."""
        if self.loss == "dense" and self.teacher_placement in ("shard", "server"):
            raise ConfigError(
                "--loss dense needs every teacher's hidden states on each rank: use "
                f"--teacher-placement local or offload (not {self.teacher_placement})"
            )
        if self.loss == "dense" and self.outcome_weight:
            raise ConfigError("--outcome-weight applies to the sampled loss only (--loss sampled)")
        if self.outcome_weight and not self.grade:
            raise ConfigError("outcome_weight needs graded rollouts: drop --no-grade")
        self._check_staleness()
        if self.lora and self.loss == "dense" and self.zero_stage == 3:
            # ZeRO-3 does not re-gather the frozen head inside the dense loss's checkpointed chunks
            raise ConfigError(
                "--lora with --loss dense and --zero-stage 3 is not supported yet: use ZeRO 0-2 "
                "(docs/lora.md)"
            )

    def _check_staleness(self) -> None:
        """``--max-staleness``: 0 or 1, and what one step off needs."""
        if self.max_staleness not in (0, 1):
            raise ConfigError(
                f"--max-staleness {self.max_staleness}: 0 (synchronous) or 1 (one step off); one "
                "engine generates one batch at a time, so a batch is never more than one step stale"
            )


# What G-OPD's scripts set (verl v0.6.1 with micro-batch 1: per-sequence averaging).
_GOPD_SCRIPTS: dict[str, Any] = {
    "samples_per_prompt": 1,
    "ppo_epochs": 1,
    "aggregation": "seq-mean-token-mean",
    "lr": 1e-5,
    "weight_decay": 0.01,
    "grad_clip": 1.0,
    "temperature": 1.0,
    "top_p": 1.0,
    "dtype": "bfloat16",
    "engine": "vllm",
}

# Named bundles of settings (docs/train.md: the table, with the source of every value).
RECIPES: dict[str, dict[str, Any]] = {
    # A laptop-sized run on the toy world. Measured (docs/performance.md): with 4 off-policy
    # updates per batch at lr 1e-3, TC-OPD(1.5,-0.5) lifted toy-math accuracy from ~31% to 78%.
    "toy": {
        "template": "plain",
        "steps": 40,
        "batch_size": 32,
        "samples_per_prompt": 4,
        "max_response_tokens": 96,
        "max_prompt_tokens": 256,
        "lr": 1e-3,
        "mini_batches": 4,
        "save_every": 10,
        "eval_n": 1,
        "eval_prompts": 100,
        "train_token_budget": 8192,
        "score_token_budget": 16384,
        "rollout_token_budget": 65536,
    },
    # The TC-OPD paper (§4 "Training Settings"), G-OPD's scripts where the paper is silent.
    "paper": {
        **_GOPD_SCRIPTS,
        "batch_size": 128,
        "steps": 50,
        "max_response_tokens": 16384,
        "mini_batches": 4,  # "multiple gradient steps on a single sample": count not given
    },
    # G-OPD's released scripts (its verl v0.6.1 fork): on-policy, one update per batch.
    "gopd": {**_GOPD_SCRIPTS, "batch_size": 1024, "mini_batches": 1},
}

# What a recipe sets for one loss only (under the settings the user gave). At the toy recipe's
# lr 1e-3 the dense loss's final mean@4 spread over 5 seeds with SD 5.8 (OPD) / 5.7 (TC-OPD)
# points; at 5e-4, 1.9 / 4.1, every seed higher (docs/results.md §1).
RECIPE_LOSS: dict[tuple[str, str], dict[str, Any]] = {("toy", "dense"): {"lr": 5e-4}}


def recipes_for_help() -> dict[str, dict[str, Any]]:
    """Each recipe's settings, and each loss-specific addition as its own entry (``--help``)."""
    extra = {f"{r} --loss {loss}": values for (r, loss), values in RECIPE_LOSS.items()}
    return {**RECIPES, **extra}


# Settings that may differ between a run and its --resume (everything else must match).
RESUMABLE_CHANGES = {
    "steps",
    "eval_every",
    "save_every",
    "keep_checkpoints",
    "tensorboard",
    "grader_workers",
    "grade_timeout_s",
    "teacher_timeout_s",
    "teacher_retries",
    "teacher_max_inflight_tokens",
}


def load_train_config(path: str | None, flags: dict[str, Any]) -> TrainConfig:
    """YAML (optional), then flags, over the recipe's settings (``toy: true`` implies ``toy``)."""
    values: dict[str, Any] = read_yaml(path) if path else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    recipe = values.get("recipe") or ("toy" if values.get("toy") else None)
    if recipe is not None:
        if recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
        by_loss = RECIPE_LOSS.get((recipe, values.get("loss", "sampled")), {})
        values = {**RECIPES[recipe], **by_loss, **values, "recipe": recipe}
    if "out" not in values:
        raise ConfigError("no run directory: pass --out RUN_DIR")
    return build(TrainConfig, values)


def resume_conflicts(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Settings the user passed for a --resume that differ from the run's saved config.

    A setting missing from the saved config (a run made before the setting existed) had its
    default: ``--resume --lora`` on such a run is a conflict, not a silent switch.
    """
    defaults = field_defaults(TrainConfig)
    had = {k: saved[k] if k in saved else defaults.get(k, v) for k, v in new.items()}
    return [
        f"{k}: run has {had[k]!r}, flags say {v!r}"
        for k, v in new.items()
        if v is not None and k not in RESUMABLE_CHANGES and k != "out" and had[k] != v
    ]

"""The settings of ``tcopd eval`` (:class:`EvalConfig`), checked when the config is built.

Every field is also a ``tcopd eval`` flag (``cli/eval_cmd.py`` generates them, with the help
strings below); value ranges are checked in ``__post_init__``, so a bad value is one error line
before any model or data is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from tcopd.config import field
from tcopd.errors import ConfigError
from tcopd.pipelines.benchmarks import BENCHMARKS
from tcopd.runtime.models.loading import resolve_dtype

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
    "context",
    "problems_per_call",
)


@dataclass(frozen=True)
class EvalConfig:
    KEY_ALIASES: ClassVar[dict[str, str]] = {"rollout_token_budget": "token_budget"}  # train's name
    benchmark: str | None = field(
        None, help=f"Benchmark: {', '.join(BENCHMARKS)} (or give --data FILE)."
    )
    models: list[str] = field(
        [],
        help="Model to evaluate: local HF directory or Hub id; repeat to compare models "
        "(default for toy: the toy world's student).",
    )
    data: str | None = field(
        None,
        help="Prepared-format (verl) data file (jsonl/json/parquet) instead of a benchmark; "
        "with a benchmark: a local copy of it.",
    )
    n: int = field(32, help="Samples per problem (the n of mean@n).")
    temperature: float = field(1.0, help="Sampling temperature (0 = greedy).")
    top_p: float = field(1.0, help="Nucleus sampling mass in (0, 1] (1.0 = off).")
    top_k: int = field(0, help="Top-k truncation (0 = off; transformers' own default would be 50).")
    max_tokens: int = field(
        16384, help="Maximum new tokens per response (clamped to what the context leaves)."
    )
    engine: Literal["hf", "vllm"] = field("hf", help="Rollout engine: hf (transformers) or vllm.")
    seed: int = field(0, help="Sampling seed (reaches the sampler; same seed → same samples).")
    out: str | None = field(None, help="Output directory (default runs/eval-<benchmark>).")
    template: Literal["auto", "chat", "plain"] = field(
        "auto",
        help="Prompt template: chat (tokenizer's), plain, or auto (chat if the tokenizer has one).",
    )
    tokenizer: str | None = field(None, help="Tokenizer path (default: each model's own).")
    context: str | None = field(
        None,
        help="Chat messages (JSON/YAML, a --teacher-prompt file) placed before every problem: "
        "evaluates the model behind that prompt.",
    )
    device: str | None = field(
        None, help="HF engine device: cpu, cuda, cuda:N (default: cuda if available, else cpu)."
    )
    dtype: str = field("float32", help="Model dtype: float32, bfloat16 or float16.")
    token_budget: int = field(
        65536, help="HF engine: rows × (prompt + max_tokens) tokens per generate call."
    )
    grader_workers: int = field(2, help="Grading worker processes (math-verify).")
    grade_timeout_s: float = field(
        10.0, help="Wall-clock seconds per graded sample; past it the sample is ungraded."
    )
    too_long: Literal["skip", "fail"] = field(
        "skip", help="A prompt longer than the model's context: skip (counted) or fail."
    )
    limit: int | None = field(None, help="Evaluate only the first N problems.")
    problems_per_call: int = field(
        1,
        help="Problems per generate call (1: each alone, the default; K > 1: fixed groups of K, "
        "padded; faster for short answers, other samples).",
    )
    from_samples: str | None = field(
        None, help="Re-grade this samples.jsonl instead of generating (no model needed)."
    )
    gpu_memory_utilization: float = field(
        0.85, help="vLLM: fraction of GPU memory to use, in (0, 1]."
    )
    tensor_parallel_size: int = field(1, help="vLLM: tensor-parallel size (GPUs per model).")

    def __post_init__(self) -> None:
        self._check_values()
        if self.from_samples is None:
            self._check_inputs()

    def _check_values(self) -> None:
        if self.n < 1:
            raise ConfigError(
                f"--n must be at least 1 (got {self.n}): the number of samples per problem"
            )
        at_least_one = {
            "--max-tokens": self.max_tokens,
            "--limit": 1 if self.limit is None else self.limit,
            "--grader-workers": self.grader_workers,
            "--rollout-token-budget": self.token_budget,
            "--tensor-parallel-size": self.tensor_parallel_size,
            "--problems-per-call": self.problems_per_call,
        }
        for flag, value in at_least_one.items():
            if value < 1:
                raise ConfigError(f"{flag} must be at least 1 (got {value})")
        if self.temperature < 0:
            raise ConfigError(f"--temperature must be >= 0 (got {self.temperature}); 0 is greedy")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"--top-p must be in (0, 1] (got {self.top_p}); 1 is off")
        if self.top_k < 0:
            raise ConfigError(f"--top-k must be >= 0 (got {self.top_k}); 0 is off")
        if self.grade_timeout_s <= 0:
            raise ConfigError(f"--grade-timeout-s must be > 0 seconds (got {self.grade_timeout_s})")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError(
                f"--gpu-memory-utilization must be in (0, 1] (got {self.gpu_memory_utilization})"
            )
        resolve_dtype(self.dtype)  # an unknown dtype is a ConfigError naming --dtype

    def _check_inputs(self) -> None:
        """What to evaluate: a known benchmark or a data file, and a model (toy: its student)."""
        if self.benchmark is None and self.data is None:
            raise ConfigError(f"give a benchmark ({', '.join(BENCHMARKS)}) or --data FILE")
        if self.benchmark is not None and self.benchmark not in BENCHMARKS:
            raise ConfigError(
                f"unknown benchmark {self.benchmark!r}; known: {', '.join(BENCHMARKS)} (or --data FILE)"
            )
        if not self.models and not (self.benchmark or "").startswith("toy"):
            raise ConfigError("--model is required (a local HF model directory or a Hub id)")

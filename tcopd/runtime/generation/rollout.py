"""Rollout engines: sample n responses per prompt. One interface, two engines.

- :class:`HFEngine` (here): transformers ``generate`` — batched, left-padded, KV cache; the
  embedded default for CPU or one GPU.
- :class:`~tcopd.runtime.generation.vllm_engine.VLLMEngine` (``runtime/generation/vllm_engine.py``, the only module
  that imports vllm): the GPU path.

Both return :class:`Completion` s ordered by ``(prompt_index, sample_index)``, with the *sampled*
token ids (never re-tokenised text), so that the trainer scores exactly what was sampled.

The trainer sees one interface (:class:`RolloutEngine`): ``generate``, ``needs_weight_sync``
(True when the engine samples from its own copy of the weights), ``update_weights``, and
``wake()`` / ``sleep()`` around generation (no-ops where there is nothing to free).

Sampling choices (docs/eval.md, docs/performance.md):

- Every sampling knob is passed explicitly and the model's own ``generation_config`` is set
  aside during the call: transformers defaults to ``top_k=50``, and a checkpoint's
  ``generation_config.json`` may add temperature/top-p/min-p/repetition penalties. "Temperature
  1.0" must mean the model's full distribution, or the sampler/trainer importance ratio is wrong.
- ``temperature == 0`` is greedy decoding.
- Seeds: each generation batch runs under ``torch.manual_seed(mix(seed, first prompt, first
  sample))`` inside ``torch.random.fork_rng`` (the caller's RNG state is left untouched). The same
  prompts, settings, seed and token budget give the same samples on the same device.
- Stops: at an EOS token (kept as the last response id, as the model sampled it; not in the text)
  or at a stop string (the text is cut *before* the stop string; the ids keep every sampled token
  up to and including the one that completed it). ``finish_reason`` is ``"stop"`` for both and
  ``"length"`` when ``max_new_tokens`` ran out.
- Log-probs (``logprobs=True``): for each response token, ``log p(token)`` under the
  distribution the sampler actually drew from — the model's float32 logits divided by the
  temperature, then top-k and top-p filtered (transformers' own warpers, in its order), then
  log-softmax. With temperature 1, top-k 0 and top-p 1 that is exactly the model's
  ``log_softmax(logits)``. Greedy (temperature 0): the untempered ``log_softmax(logits)``.
  Recorded step by step (memory O(batch × vocab), not O(T × batch × vocab)).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from tcopd.errors import ConfigError, ModelError
from tcopd.runtime.models import loading as models

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: ``n`` responses per prompt (docs/eval.md defaults for evaluation)."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k truncation (transformers' own default would be 50)
    max_new_tokens: int = 16384
    seed: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)
    logprobs: bool = False  # return the sampler's per-token log-probs

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(
                f"n must be at least 1 (got {self.n}): the number of samples per prompt"
            )
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (got {self.temperature}); 0 means greedy")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (got {self.top_k}); 0 disables it")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1 (got {self.max_new_tokens})")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        if any(not s for s in self.stop):
            raise ConfigError("stop strings must be non-empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Completion:
    """One sampled response. ``response_ids`` are the sampled ids (EOS included when it stopped)."""

    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    finish_reason: FinishReason
    logprobs: list[float] | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.response_ids)


def batch_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """A 63-bit seed for the batch whose first row is ``(prompt_index, sample_index)`` (splitmix64)."""
    x = (
        seed * 0x9E3779B97F4A7C15
        + prompt_index * 0xBF58476D1CE4E5B9
        + sample_index * 0x94D049BB133111EB
    ) & (2**64 - 1)
    x ^= x >> 31
    x = (x * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x ^= x >> 27
    return x & (2**63 - 1)


def plan_batches(lengths: Sequence[int], max_new_tokens: int, token_budget: int) -> list[list[int]]:
    """Split rows (in order) into batches with ``rows × (longest prompt + max_new_tokens) ≤ budget``.

    A row that alone exceeds the budget gets a batch of its own.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i, n in enumerate(lengths):
        cand = max(longest, n)
        if current and (len(current) + 1) * (cand + max_new_tokens) > token_budget:
            batches.append(current)
            current, cand = [], n
        current.append(i)
        longest = cand
    if current:
        batches.append(current)
    return batches


# --------------------------------------------------------------------------- transformers hooks


class _StopStrings(StoppingCriteria):
    """Done when the decoded tail of a row's response contains a stop string."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...], prompt_len: int, batch: int) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.prompt_len = prompt_len
        self.stopped_at: list[int | None] = [None] * batch
        # A stop string of c characters spans at most ~4c byte-level tokens.
        self.tail = 4 * max(len(s) for s in stop) + 4

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kw: Any) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        gen = input_ids[:, self.prompt_len :]
        for row in range(gen.shape[0]):
            if self.stopped_at[row] is not None:
                done[row] = True
                continue
            text = self.tokenizer.decode(gen[row, -self.tail :].tolist(), skip_special_tokens=False)
            if any(s in text for s in self.stop):
                self.stopped_at[row] = gen.shape[1]
                done[row] = True
        return done


class _LogprobRecorder(LogitsProcessor):
    """Log-prob of each sampled token under the distribution it was drawn from.

    transformers runs custom processors *before* its sampling warpers, so this applies the same
    warper objects (``warpers``: temperature, top-k, top-p, in transformers' order) to its own
    view of the scores and returns the scores unchanged. At step j it learns the token sampled
    at step j-1 (the last column of ``input_ids``) and gathers its log-prob.
    """

    def __init__(self, warpers: list[Any]) -> None:
        self.warpers = warpers
        self.steps: list[torch.Tensor] = []  # steps[j][row] = logp of generated token j
        self.last_lp_BV: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.last_lp_BV is not None:
            self.steps.append(self.last_lp_BV.gather(1, input_ids[:, -1:]).squeeze(1).float().cpu())
        view = scores
        for w in self.warpers:
            view = w(input_ids, view)
        self.last_lp_BV = torch.log_softmax(view.float(), dim=-1)
        return scores

    def finish(self, generated_BT: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` log-probs of the generated tokens."""
        T = generated_BT.shape[1]
        if len(self.steps) < T and self.last_lp_BV is not None:
            last = generated_BT[:, len(self.steps) : len(self.steps) + 1].to(self.last_lp_BV.device)
            self.steps.append(self.last_lp_BV.gather(1, last).squeeze(1).float().cpu())
        self.last_lp_BV = None
        if T == 0:
            return torch.zeros(generated_BT.shape[0], 0)
        return torch.stack(self.steps[:T], dim=1)


def _warpers(sampling: SamplingParams) -> list[Any]:
    """The warpers transformers applies when sampling, in its order (temperature, top-k, top-p)."""

    out: list[Any] = []
    if sampling.greedy:
        return out
    if sampling.temperature != 1.0:
        out.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k:
        out.append(TopKLogitsWarper(top_k=sampling.top_k, min_tokens_to_keep=1))
    if sampling.top_p < 1.0:
        out.append(TopPLogitsWarper(top_p=sampling.top_p, min_tokens_to_keep=1))
    return out


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    for src in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(value, int):
            ids.append(value)
        elif isinstance(value, (list, tuple)):
            ids.extend(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return sorted(set(ids))


# -------------------------------------------------------------------------------- the interface
class RolloutEngine(Protocol):
    """What the trainer needs from a rollout engine (HF and vLLM both provide it)."""

    needs_weight_sync: bool

    def generate(
        self, prompt_ids: Sequence[Sequence[int]], sampling: SamplingParams
    ) -> list[Completion]: ...

    def update_weights(self, state_dict: Mapping[str, torch.Tensor]) -> Any: ...

    def wake(self) -> None: ...

    def sleep(self) -> None: ...

    def close(self) -> None: ...


# -------------------------------------------------------------------------------- the HF engine


class HFEngine:
    """Sampling with transformers ``generate`` (see the module docstring for the exact semantics).

    ``model`` is a loaded causal LM or a path (loaded with :func:`tcopd.runtime.models.loading.load_causal_lm`);
    ``tokenizer`` likewise (default: the model's directory). ``token_budget`` bounds
    ``rows × (longest prompt + max_new_tokens)`` per generate call. ``needs_weight_sync``: set
    True when ``model`` is a copy of the trained weights (ZeRO-3) rather than the training module.
    """

    def __init__(
        self,
        model: torch.nn.Module | str | Path,
        tokenizer: Any = None,
        device: str | torch.device | None = None,
        token_budget: int = 65536,
        dtype: str | torch.dtype = "float32",
        needs_weight_sync: bool = False,
    ):
        self.needs_weight_sync = needs_weight_sync

        if device is None:
            device = getattr(model, "device", None) if isinstance(model, torch.nn.Module) else None
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(device)
        if isinstance(model, (str, Path)):
            if tokenizer is None:
                tokenizer = model
            model = models.load_causal_lm(model, dtype=dtype, device=self.device)
        elif isinstance(model, torch.nn.Module):
            model = model.to(self.device)
        else:
            raise ModelError(f"HFEngine needs a model or a model path, got {type(model).__name__}")
        if tokenizer is None:
            raise ModelError(
                "HFEngine needs a tokenizer (or a model path whose directory holds one)"
            )
        if isinstance(tokenizer, (str, Path)):
            tokenizer = models.load_tokenizer(tokenizer)
        if token_budget < 1:
            raise ConfigError(f"token_budget must be positive (got {token_budget})")
        self.model = model
        self.tokenizer = tokenizer
        self.token_budget = int(token_budget)
        self.eos_ids = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0))
        self.max_context = models.max_positions(model)

    # -- weights -------------------------------------------------------------------------------

    def update_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Copy new weights into the model in place (names as in ``model.state_dict()``)."""
        own = self.model.state_dict()
        unknown = [k for k in state_dict if k not in own]
        if unknown:
            raise ModelError(
                f"update_weights: {len(unknown)} unknown parameter names, e.g. {unknown[0]!r}"
            )
        with torch.no_grad():
            for name, value in state_dict.items():
                target = own[name]
                if target.shape != value.shape:
                    raise ModelError(
                        f"update_weights: {name!r} has shape {tuple(value.shape)}, the model's is {tuple(target.shape)}"
                    )
                target.copy_(value.to(device=target.device, dtype=target.dtype))

    def wake(self) -> None:
        """Nothing to do: the HF engine holds no memory of its own between calls."""

    def sleep(self) -> None:
        """Nothing to do (see :meth:`wake`)."""

    def close(self) -> None:
        """Nothing to do: the model belongs to the caller."""

    # -- sampling ------------------------------------------------------------------------------

    def generate(
        self, prompt_ids: Sequence[Sequence[int]], sampling: SamplingParams
    ) -> list[Completion]:
        """``sampling.n`` completions per prompt, ordered by ``(prompt_index, sample_index)``."""
        rows = [(p, s) for p in range(len(prompt_ids)) for s in range(sampling.n)]
        lengths = [len(prompt_ids[p]) for p, _ in rows]
        if any(n == 0 for n in lengths):
            raise ConfigError("a prompt has no tokens: every prompt needs at least one token")
        out: list[Completion] = []
        for batch in plan_batches(lengths, sampling.max_new_tokens, self.token_budget):
            items = [rows[i] for i in batch]
            out.extend(
                self._generate_batch([list(prompt_ids[p]) for p, _ in items], items, sampling)
            )
        out.sort(key=lambda c: (c.prompt_index, c.sample_index))
        return out

    @torch.no_grad()
    def _generate_batch(
        self, prompts: list[list[int]], items: list[tuple[int, int]], sampling: SamplingParams
    ) -> list[Completion]:
        B, L = len(prompts), max(len(p) for p in prompts)
        ids_BL = torch.full((B, L), self.pad_id, dtype=torch.long)
        mask_BL = torch.zeros((B, L), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: the last prompt token is at column L-1
            ids_BL[i, L - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask_BL[i, L - len(p) :] = 1

        gen_config = self._generation_config(sampling)
        processors = LogitsProcessorList()
        recorder = None
        if sampling.logprobs:
            recorder = _LogprobRecorder(_warpers(sampling))
            processors.append(recorder)
        criteria = StoppingCriteriaList()
        stopper = None
        if sampling.stop:
            stopper = _StopStrings(self.tokenizer, tuple(sampling.stop), L, B)
            criteria.append(stopper)

        p0, s0 = items[0]
        saved_config = self.model.generation_config
        self.model.generation_config = GenerationConfig()  # transformers' global defaults only
        was_training = self.model.training  # a trainer may hand us its module: restore its mode
        self.model.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(batch_seed(sampling.seed, p0, s0))
                seqs = self.model.generate(
                    input_ids=ids_BL.to(self.device),
                    attention_mask=mask_BL.to(self.device),
                    generation_config=gen_config,
                    logits_processor=processors,
                    stopping_criteria=criteria,
                )
        finally:
            self.model.generation_config = saved_config
            self.model.train(was_training)
        gen_BT = seqs[:, L:].cpu()
        logp_BT = recorder.finish(gen_BT) if recorder is not None else None
        return [
            self._completion(
                p,
                s,
                prompts[i],
                gen_BT[i].tolist(),
                stopper.stopped_at[i] if stopper else None,
                logp_BT[i].tolist() if logp_BT is not None else None,
                sampling,
            )
            for i, (p, s) in enumerate(items)
        ]

    def _generation_config(self, sampling: SamplingParams) -> GenerationConfig:
        """Every knob explicit; temperature 0 → greedy. Sampling knobs of a checkpoint's
        generation_config must not leak in (see module docstring): the caller swaps it out."""
        return GenerationConfig(
            do_sample=not sampling.greedy,
            # (greedy ignores these three; transformers warns about them when set with do_sample=False)
            temperature=None if sampling.greedy else float(sampling.temperature),
            top_k=None if sampling.greedy else int(sampling.top_k),
            top_p=None if sampling.greedy else float(sampling.top_p),
            min_p=None,
            typical_p=1.0,
            epsilon_cutoff=0.0,
            eta_cutoff=0.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            num_beams=1,
            num_return_sequences=1,
            min_new_tokens=0,
            max_new_tokens=int(sampling.max_new_tokens),
            eos_token_id=self.eos_ids or None,
            pad_token_id=self.pad_id,
            bos_token_id=None,
            use_cache=True,
            return_dict_in_generate=False,
            output_scores=False,
        )

    def _completion(
        self,
        p: int,
        s: int,
        prompt: list[int],
        gen: list[int],
        stopped_at: int | None,
        logprobs: list[float] | None,
        sampling: SamplingParams,
    ) -> Completion:
        end, reason = len(gen), "length"
        eos = set(self.eos_ids)
        for j, tok in enumerate(gen):
            if tok in eos:
                end, reason = j + 1, "stop"
                break
        if stopped_at is not None and stopped_at <= end:
            end, reason = stopped_at, "stop"
        ids = gen[:end]
        body = ids[:-1] if ids and ids[-1] in eos else ids
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        if sampling.stop:
            cut = min((text.find(x) for x in sampling.stop if x in text), default=-1)
            if cut >= 0:
                text, reason = text[:cut], "stop"
        lp = logprobs[:end] if logprobs is not None else None
        if lp is not None and any(math.isnan(v) for v in lp):
            raise ModelError("sampler log-probs contain NaN: the model produced non-finite logits")
        return Completion(p, s, list(prompt), ids, text, reason, lp)  # type: ignore[arg-type]


def make_engine(kind: str, model: Any, tokenizer: Any = None, **kwargs: Any) -> Any:
    """``"hf"`` → :class:`HFEngine`; ``"vllm"`` → :class:`~tcopd.runtime.generation.vllm_engine.VLLMEngine`."""
    if kind == "hf":
        allowed = {"device", "token_budget", "dtype", "needs_weight_sync"}
        return HFEngine(model, tokenizer, **{k: v for k, v in kwargs.items() if k in allowed})
    if kind == "vllm":
        from tcopd.runtime.generation.vllm_engine import VLLMEngine

        allowed = {
            "dtype",
            "gpu_memory_utilization",
            "tensor_parallel_size",
            "max_model_len",
            "enable_sleep_mode",
            "enforce_eager",
            "seed",
            "log_path",
            "max_lora_rank",
        }
        return VLLMEngine(model, tokenizer, **{k: v for k, v in kwargs.items() if k in allowed})
    raise ConfigError(f"unknown rollout engine {kind!r}; use 'hf' or 'vllm'")

"""The multi-teacher batched log-prob scorer (SPEC §1, §6): the hot path of every training step.

:func:`model_response_logprobs` scores one micro-batch under one model: the base model gives the
final hidden states, and only the positions that predict a response token go through the output
projection, chunk by chunk (:func:`tcopd.core.logprobs.token_logprobs`), so the T×V logits never
exist. It records autograd when grad is enabled (the trainer's π_θ).

:class:`Scorer` scores a batch of (prompt, response) pairs under several named models with one
micro-batch plan (token-budget, longest first), under ``torch.inference_mode``. Placement:

- ``local``: every model on ``device``;
- ``offload``: models kept in CPU memory and moved to ``device`` one at a time (memory: one model);
- ``shard``: under ``torch.distributed``, each sharded name lives on one rank (``teacher_owner``);
  the owner scores every rank's sequences and sends each rank its own results back. Names not
  in ``teacher_owner`` are local on every rank (student, reference). See docs/score.md.

On CUDA: pinned host buffers and non-blocking copies; on ``torch.OutOfMemoryError`` the token
budget is halved and the failed micro-batch retried (logged), down to a single sequence.
No Triton anywhere: plain matmul + logsumexp, the same code on CPU.
"""

from __future__ import annotations

import logging
import resource
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist

from tcopd.core.batching import padded_tokens, plan_packed, plan_padded
from tcopd.core.logprobs import token_logprobs
from tcopd.errors import ConfigError, DataError, ModelError

log = logging.getLogger(__name__)

Placement = Literal["local", "offload", "shard"]
Packing = Literal["auto", "on", "off"]
PLACEMENTS = ("local", "offload", "shard")
Ids = Sequence[int] | torch.Tensor
Progress = Callable[[int, int], None]


# ----------------------------------------------------------------------------------- one model
@dataclass(frozen=True)
class OutputHead:
    """What turns a final hidden state into logits (see core/logprobs.py for the formula)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    scale: float
    softcap: float | None
    module: torch.nn.Module | None = None


def _number(config: Any, key: str) -> float | None:
    value = getattr(config, key, None)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def output_head(model: torch.nn.Module) -> tuple[torch.nn.Module, OutputHead] | None:
    """``(base_model, head)`` for an HF causal LM, or None if it does not expose both.

    Reads ``config.logit_scale`` (Cohere: logits × s), ``config.logits_scaling`` (Granite:
    logits ÷ s) and ``config.final_logit_softcapping`` (Gemma 2/3). Tied embeddings need no
    special case: ``lm_head.weight`` *is* the input embedding then.
    """
    base = getattr(model, "base_model", None)
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if base is None or base is model or not isinstance(head, torch.nn.Linear):
        return None
    config = getattr(model, "config", None)
    scale = 1.0
    if (s := _number(config, "logit_scale")) is not None:
        scale *= s
    if (s := _number(config, "logits_scaling")) is not None and s != 0:
        scale /= s
    softcap = _number(config, "final_logit_softcapping")
    return base, OutputHead(head.weight, head.bias, scale, softcap if softcap else None, head)


def _as_list(ids: Ids) -> list[int]:
    return ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _model_device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def uses_varlen_attention(model: torch.nn.Module) -> bool:
    """True when the model's attention kernel is flash-attention (padding-free packing pays off)."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None) or ""
    return str(impl).startswith("flash")


def model_response_logprobs(
    model: torch.nn.Module,
    prompt_ids: Sequence[Ids],
    response_ids: Sequence[Ids],
    chunk_size: int = 512,
    temperature: float = 1.0,
    packed: bool = False,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``logp_BT[b, t] = log π(response_b[t] | prompt_b, response_b[:t])``, float32, zero-padded right.

    One forward of the base model over ``prompt + response`` (right-padded, or ``packed`` into
    one row with per-sequence position ids), then log-probs only at the response positions.
    Works in train or eval mode; differentiable when grad is enabled. A model without a base
    model / linear ``lm_head`` falls back to ``model(...).logits`` (the full logits: more memory).
    With ``return_entropy`` also returns ``entropy_BT`` of the (tempered) token distributions.
    """
    prompts = [_as_list(p) for p in prompt_ids]
    responses = [_as_list(r) for r in response_ids]
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    for b, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        if not p or not r:
            raise DataError(
                f"sequence {b}: the prompt and the response each need at least one token"
            )
    device = _model_device(model)
    B = len(prompts)
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses, strict=True)]
    T = max(len(r) for r in responses)
    # flat position (in the model's (rows × L) output) of the hidden state that predicts each response token
    pred_pos: list[int] = []
    out_pos: list[int] = []  # flat position in logp_BT
    if packed:
        L = sum(lengths)
        ids = torch.zeros(1, L, dtype=torch.long)
        pos = torch.zeros(1, L, dtype=torch.long)
        offset = 0
        for b, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            n = len(p) + len(r)
            ids[0, offset : offset + n] = torch.tensor(p + r)
            pos[0, offset : offset + n] = torch.arange(n)
            pred_pos.extend(range(offset + len(p) - 1, offset + n - 1))
            out_pos.extend(range(b * T, b * T + len(r)))
            offset += n
        inputs = {"input_ids": ids, "position_ids": pos}
    else:
        L = max(lengths)
        ids = torch.zeros(B, L, dtype=torch.long)
        mask = torch.zeros(B, L, dtype=torch.long)
        for b, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            n = len(p) + len(r)
            ids[b, :n] = torch.tensor(p + r)
            mask[b, :n] = 1
            pred_pos.extend(range(b * L + len(p) - 1, b * L + n - 1))
            out_pos.extend(range(b * T, b * T + len(r)))
        # Right padding: real tokens sit at positions 0..n-1 and never attend to the padding.
        inputs = {"input_ids": ids, "attention_mask": mask}
    inputs = {k: _to_device(v, device) for k, v in inputs.items()}
    pred_idx = _to_device(torch.tensor(pred_pos, dtype=torch.long), device)
    out_idx = _to_device(torch.tensor(out_pos, dtype=torch.long), device)
    targets_N = _to_device(
        torch.tensor([t for r in responses for t in r], dtype=torch.long), device
    )

    found = output_head(model)
    if found is not None:
        base, head = found
        hidden = base(**inputs, use_cache=False).last_hidden_state
        hidden_NH = hidden.reshape(-1, hidden.shape[-1]).index_select(0, pred_idx)
        # A ZeRO-3-partitioned head keeps only a shard outside its forward: call the module.
        partitioned = hasattr(head.weight, "ds_id")
        result = token_logprobs(
            hidden_NH,
            head.module if partitioned else head.weight,
            targets_N,
            chunk_size=chunk_size,
            temperature=temperature,
            softcap=head.softcap,
            bias_V=None if partitioned else head.bias,
            scale=head.scale,
            return_entropy=return_entropy,
        )
    else:
        # Fallback: the model computes every logit itself (whatever transform it applies).
        logits = model(**inputs, use_cache=False).logits
        logits_NV = logits.reshape(-1, logits.shape[-1]).index_select(0, pred_idx)
        z_NV = logits_NV.float() / temperature
        lsm_NV = torch.log_softmax(z_NV, dim=-1)
        logp = lsm_NV.gather(-1, targets_N.unsqueeze(-1)).squeeze(-1)
        result = (logp, -(lsm_NV.exp() * lsm_NV).sum(-1)) if return_entropy else logp
    logp_N, ent_N = result if return_entropy else (result, None)
    logp_BT = logp_N.new_zeros(B * T).index_copy(0, out_idx, logp_N).view(B, T)
    if ent_N is None:
        return logp_BT
    return logp_BT, ent_N.new_zeros(B * T).index_copy(0, out_idx, ent_N).view(B, T)


# ------------------------------------------------------------------------------- the scorer
@dataclass
class ScoreResult:
    """``logprobs[name][i]``: float32 log-probs of response i's tokens under model ``name`` (CPU)."""

    logprobs: dict[str, list[torch.Tensor]]
    stats: dict[str, Any] = field(default_factory=dict)


def peak_memory_gb(device: torch.device) -> dict[str, float]:
    """Peak memory: CUDA allocator peak since the last reset, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return {str(device): torch.cuda.max_memory_allocated(device) / 1e9}
    # ru_maxrss is in KiB on Linux: the whole process's high-water mark so far.
    return {"cpu": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}


class Scorer:
    """Score (prompt, response) pairs under named models; see the module docstring.

    ``models``: ``{name: HF causal LM}``. Under ``placement="shard"`` each rank passes the local
    models (every rank has them) plus the sharded ones it hosts, and ``teacher_owner`` maps every
    sharded name to its hosting rank (the same dict on all ranks; :func:`round_robin_owners`).
    ``score`` is then a collective: all ranks call it, each with its own sequences.
    """

    def __init__(
        self,
        models: Mapping[str, torch.nn.Module],
        placement: Placement = "local",
        device: str | torch.device = "cpu",
        token_budget: int = 16384,
        chunk_size: int = 512,
        temperature: float = 1.0,
        teacher_owner: Mapping[str, int] | None = None,
        packing: Packing = "auto",
        group: Any = None,
    ):
        if placement not in PLACEMENTS:
            raise ConfigError(
                f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}"
            )
        if token_budget < 1 or chunk_size < 1:
            raise ConfigError(
                f"token_budget and chunk_size must be >= 1, got {token_budget} and {chunk_size}"
            )
        if packing not in ("auto", "on", "off"):
            raise ConfigError(f"packing must be auto, on or off, got {packing!r}")
        self.placement = placement
        self.device = torch.device(device)
        self.token_budget = int(token_budget)
        self.chunk_size = int(chunk_size)
        self.temperature = float(temperature)
        self.packing = packing
        self.group = group
        self.owner: dict[str, int] = dict(teacher_owner or {})
        if placement == "shard":
            if not (dist.is_available() and dist.is_initialized()):
                raise ConfigError("placement 'shard' needs torch.distributed: launch with torchrun")
            self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
            for name, r in self.owner.items():
                if not 0 <= r < self.world:
                    raise ConfigError(
                        f"teacher_owner[{name!r}] = {r} is not a rank of this {self.world}-process group"
                    )
                if r == self.rank and name not in models:
                    raise ConfigError(
                        f"rank {self.rank} must host {name!r} (teacher_owner) but was not given it"
                    )
            # Names owned elsewhere are not hosted here, even if passed in.
            self.models = {
                n: m for n, m in models.items() if self.owner.get(n, self.rank) == self.rank
            }
        else:
            if self.owner:
                raise ConfigError("teacher_owner is only meaningful with placement 'shard'")
            self.rank, self.world = 0, 1
            self.models = dict(models)
        target = torch.device("cpu") if placement == "offload" else self.device
        for m in self.models.values():
            m.to(target)
            m.eval()

    @property
    def names(self) -> list[str]:
        """Every name :meth:`score` can return: local/hosted models, then the sharded ones."""
        return [n for n in self.models if n not in self.owner] + list(self.owner)

    # -- public ----------------------------------------------------------------------------
    def score(
        self,
        prompt_ids: Sequence[Ids],
        response_ids: Sequence[Ids],
        names: Sequence[str] | None = None,
        progress: Progress | None = None,
    ) -> ScoreResult:
        """Log-probs of each response under each of ``names`` (default: all); see the class doc.

        ``progress(done, total)`` is called after each micro-batch, in model-tokens.
        """
        prompts = [_as_list(p) for p in prompt_ids]
        responses = [_as_list(r) for r in response_ids]
        if len(prompts) != len(responses):
            raise DataError(f"{len(prompts)} prompts but {len(responses)} responses")
        names = list(self.names if names is None else names)
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise ConfigError(
                f"no model named {unknown[0]!r} in this scorer (have: {', '.join(self.names)})"
            )
        self._check_ids(prompts, responses)
        local = [n for n in names if n not in self.owner]
        sharded = [n for n in names if n in self.owner]
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        self._stats = {"model_tokens": 0, "processed": 0, "real": 0, "micro_batches": 0}
        everyone = self._gather_all(prompts, responses) if sharded else [(prompts, responses)]
        all_p = [p for ps, _ in everyone for p in ps]
        all_r = [r for _, rs in everyone for r in rs]
        total = sum(len(r) for r in responses) * len(local) + sum(
            len(r) for r in all_r for n in sharded if self.owner[n] == self.rank
        )
        tick = _Ticker(progress, total)
        out: dict[str, list[torch.Tensor]] = {}
        with torch.inference_mode():
            for name in local:
                out[name] = self._score_model(name, prompts, responses, tick)
            for name in sharded:
                out[name] = self._score_sharded(name, everyone, all_p, all_r, tick)
        seconds = time.perf_counter() - t0
        s = self._stats
        stats = {
            "tokens": sum(len(r) for r in responses),
            "model_tokens": s["model_tokens"],
            "seconds": seconds,
            "tokens_per_s": s["model_tokens"] / seconds if seconds > 0 else 0.0,
            "padding_fraction": 1.0 - s["real"] / s["processed"] if s["processed"] else 0.0,
            "micro_batches": s["micro_batches"],
            "token_budget": self.token_budget,
            "peak_mem_gb": peak_memory_gb(self.device),
        }
        return ScoreResult(out, stats)

    # -- internals -------------------------------------------------------------------------
    def _check_ids(self, prompts: list[list[int]], responses: list[list[int]]) -> None:
        vocab = min(
            (m.get_input_embeddings().weight.shape[0] for m in self.models.values()), default=None
        )
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            if not r:
                raise DataError(f"sequence {i}: empty response (nothing to score)")
            if not p:
                raise DataError(
                    f"sequence {i}: empty prompt (the first response token needs a context)"
                )
            top = max(max(p), max(r))
            if vocab is not None and top >= vocab:
                raise DataError(f"sequence {i}: token id {top} >= vocabulary size {vocab}")
            if min(min(p), min(r)) < 0:
                raise DataError(f"sequence {i}: negative token id")

    def _score_model(
        self, name: str, prompts: list[list[int]], responses: list[list[int]], tick: _Ticker
    ) -> list[torch.Tensor]:
        model = self.models[name]
        if self.placement == "offload":
            model.to(self.device)
        try:
            return self._run(model, prompts, responses, tick)
        finally:
            if self.placement == "offload":
                model.to("cpu")
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    def _run(
        self,
        model: torch.nn.Module,
        prompts: list[list[int]],
        responses: list[list[int]],
        tick: _Ticker,
    ) -> list[torch.Tensor]:
        """All sequences through one model, micro-batch by micro-batch; halves the budget on OOM."""
        packed = self.packing == "on" or (self.packing == "auto" and uses_varlen_attention(model))
        lengths = [len(p) + len(r) for p, r in zip(prompts, responses, strict=True)]
        plan = plan_packed if packed else plan_padded
        queue = deque(plan(lengths, self.token_budget))
        pending: list[tuple[list[int], torch.Tensor]] = []
        while queue:
            idx = queue.popleft()
            oom = False
            try:
                logp_BT = model_response_logprobs(
                    model,
                    [prompts[i] for i in idx],
                    [responses[i] for i in idx],
                    chunk_size=self.chunk_size,
                    temperature=self.temperature,
                    packed=packed,
                )
            except torch.OutOfMemoryError:
                oom = True  # handled below, outside the except block, so the failed frame is freed
            if oom:
                self._shrink(idx, lengths, queue, plan, packed)
                continue
            pending.append((idx, _to_host(logp_BT)))
            self._stats["micro_batches"] += 1
            self._stats["processed"] += padded_tokens(lengths, [idx], packed)
            self._stats["real"] += sum(lengths[i] for i in idx)
            n_tok = sum(len(responses[i]) for i in idx)
            self._stats["model_tokens"] += n_tok
            tick(n_tok)
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # the non-blocking copies to host
        out: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
        for idx, logp_BT in pending:
            for row, i in enumerate(idx):
                out[i] = logp_BT[row, : len(responses[i])].clone()
        return out

    def _shrink(
        self, idx: list[int], lengths: list[int], queue: deque, plan: Callable, packed: bool
    ) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        used = padded_tokens(lengths, [idx], packed)
        if len(idx) > 1:
            self.token_budget = max(1, min(self.token_budget, used) // 2)
            log.warning(
                "out of memory on a micro-batch of %d tokens: token budget halved to %d",
                used,
                self.token_budget,
            )
            sub = plan([lengths[i] for i in idx], self.token_budget)  # indexes into idx
            queue.extendleft(reversed([[idx[j] for j in group] for group in sub]))
            return
        if self.chunk_size > 16:
            self.chunk_size //= 2
            log.warning(
                "out of memory on one sequence of %d tokens: chunk size halved to %d",
                used,
                self.chunk_size,
            )
            queue.appendleft(idx)
            return
        raise ModelError(
            f"out of memory scoring one sequence of {used} tokens even at chunk size {self.chunk_size}: "
            "use a bigger device, placement 'offload', or a lower --dtype"
        )

    def _gather_all(self, prompts: list[list[int]], responses: list[list[int]]) -> list[tuple]:
        """Every rank's (prompts, responses), in rank order (token lists are small next to logits)."""
        everyone: list[Any] = [None] * self.world
        dist.all_gather_object(everyone, (prompts, responses), group=self.group)
        return everyone

    def _score_sharded(
        self, name: str, everyone: list[tuple], all_p: list, all_r: list, tick: _Ticker
    ) -> list[torch.Tensor]:
        """The owner scores all ranks' sequences for ``name`` and scatters each rank its share."""
        src = self.owner[name]
        received: list[Any] = [None]
        if self.rank == src:
            flat = self._score_model(name, all_p, all_r, tick)
            shares, start = [], 0
            for ps, _ in everyone:
                shares.append(flat[start : start + len(ps)])
                start += len(ps)
        else:
            shares = None
        global_src = dist.get_global_rank(self.group, src) if self.group is not None else src
        dist.scatter_object_list(received, shares, src=global_src, group=self.group)
        return received[0]


def _to_host(t: torch.Tensor) -> torch.Tensor:
    """Copy to CPU; on CUDA into pinned memory, non-blocking (synchronised once per model)."""
    if t.device.type != "cuda":
        return t
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    return host


class _Ticker:
    def __init__(self, progress: Progress | None, total: int):
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total)

"""The multi-teacher batched log-prob scorer (docs/algorithm.md, docs/score.md): the hot path of every training step.

One model's forward (:func:`~tcopd.runtime.scoring.forward.model_response_logprobs`, no T×V logits) lives
in ``runtime/scoring/forward.py``; :class:`Scorer` scores a batch of (prompt, response) pairs under several named models with one
micro-batch plan (token-budget, longest first), under ``torch.inference_mode``. Placement:

- ``local``: every model on ``device``;
- ``offload``: models kept in CPU memory and moved to ``device`` one at a time (memory: one model);
- ``shard``: under ``torch.distributed``, each sharded name lives on one rank (``teacher_owner``);
  the owner scores every rank's sequences and sends each rank its own results back. Names not
  in ``teacher_owner`` are local on every rank (student, reference). See docs/score.md.
- ``server`` (per teacher, beside any of the above): names in ``servers`` are scored by vLLM
  servers (:mod:`tcopd.runtime.scoring.served`), in a background thread while the local models score;
  each rank sends its own sequences. The result has the same structure either way, so reward
  and advantage code cannot tell the difference. See docs/serving.md.

On CUDA: pinned host buffers and non-blocking copies; on ``torch.OutOfMemoryError`` the token
budget is halved and the failed micro-batch retried (logged), down to a single sequence, then
the chunk size; for the rest of that model's pass only (the next call starts from the
configured budget again).
No Triton anywhere: plain matmul + logsumexp, the same code on CPU.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import torch
import torch.distributed as dist

from tcopd.core.batching import padded_tokens, plan_packed, plan_padded
from tcopd.errors import ConfigError, DataError, ModelError
from tcopd.progress import Event, Progress
from tcopd.runtime.scoring import served as served_lib
from tcopd.runtime.scoring.forward import (
    Ids,
    OutputHead,
    _as_list,
    model_response_logprobs,
    output_head,
    response_hidden_states,
    uses_varlen_attention,
)

log = logging.getLogger(__name__)
R = TypeVar("R")

Placement = Literal["local", "offload", "shard"]
Packing = Literal["auto", "on", "off"]
PLACEMENTS = ("local", "offload", "shard")


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
        servers: Mapping[str, served_lib.ServedTeacher] | None = None,
    ):
        _check_settings(placement, token_budget, chunk_size, packing)
        self.placement = placement
        self.device = torch.device(device)
        self.token_budget = int(token_budget)
        self.chunk_size = int(chunk_size)
        self.temperature = float(temperature)
        self.packing = packing
        self.group = group
        self.owner: dict[str, int] = dict(teacher_owner or {})
        if placement == "shard":
            self.models = self._hosted_models(models)
        else:
            if self.owner:
                raise ConfigError("teacher_owner is only meaningful with placement 'shard'")
            self.rank, self.world = 0, 1
            self.models = dict(models)
        self.servers = dict(servers or {})
        clash = [n for n in self.servers if n in models or n in self.owner]
        if clash:
            raise ConfigError(f"{clash[0]!r} is given both as a model and as a served teacher")
        target = torch.device("cpu") if placement == "offload" else self.device
        for m in self.models.values():
            m.to(target)
            m.eval()

    def _hosted_models(self, models: Mapping[str, torch.nn.Module]) -> dict[str, torch.nn.Module]:
        """Placement ``shard``: this rank's place in the group, the ownership checked, and the
        models this rank hosts (names owned elsewhere are not hosted here, even if passed in)."""
        if not (dist.is_available() and dist.is_initialized()):
            raise ConfigError("placement 'shard' needs torch.distributed: launch with torchrun")
        self.rank, self.world = dist.get_rank(self.group), dist.get_world_size(self.group)
        for name, r in self.owner.items():
            if not 0 <= r < self.world:
                raise ConfigError(
                    f"teacher_owner[{name!r}] = {r} is not a rank of this {self.world}-process group"
                )
            if r == self.rank and name not in models:
                raise ConfigError(
                    f"rank {self.rank} must host {name!r} (teacher_owner) but was not given it"
                )
        return {n: m for n, m in models.items() if self.owner.get(n, self.rank) == self.rank}

    @property
    def names(self) -> list[str]:
        """Every name :meth:`score` can return: local/hosted models, the sharded, the served."""
        return (
            [n for n in self.models if n not in self.owner] + list(self.owner) + list(self.servers)
        )

    # -- public ----------------------------------------------------------------------------
    def score(
        self,
        prompt_ids: Sequence[Ids],
        response_ids: Sequence[Ids],
        names: Sequence[str] | None = None,
        progress: Progress | None = None,
        prompts_of: Mapping[str, Sequence[Ids]] | None = None,
        served_started: served_lib.Background | None = None,
    ) -> ScoreResult:
        """Log-probs of each response under each of ``names`` (default: all); see the class doc.

        ``served_started``: the served teachers' scoring of these responses, already started
        (``--max-staleness 1`` starts it as soon as the batch exists); else it starts here.

        ``prompts_of[name]``: that model's own prompt ids for each response (a context teacher,
        :mod:`tcopd.runtime.scoring.contexts`), used instead of ``prompt_ids``; the response ids are the
        same for every model. ``progress`` gets an ``Event("scoring", done, total)`` after each
        micro-batch, in model-tokens.
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
        own = self._own_prompts(prompts_of, names, responses)
        served = {n: self.servers[n] for n in names if n in self.servers}
        local = [n for n in names if n not in self.owner and n not in served]
        sharded = [n for n in names if n in self.owner]
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        background = served_started
        if background is None and served:
            background = served_lib.Background(served, prompts, responses, own)
        self._stats = {"model_tokens": 0, "processed": 0, "real": 0, "micro_batches": 0}
        self._stats["token_budget"] = self.token_budget
        out: dict[str, list[torch.Tensor]] = {}
        try:
            everyone = self._gather_all(prompts, responses) if sharded else [(prompts, responses)]
            all_p = [p for ps, _ in everyone for p in ps]
            all_r = [r for _, rs in everyone for r in rs]
            total = sum(len(r) for r in responses) * len(local) + sum(
                len(r) for r in all_r for n in sharded if self.owner[n] == self.rank
            )
            tick = _Ticker(progress, total)
            with torch.inference_mode():
                for name in local:
                    out[name] = self._score_model(name, own.get(name, prompts), responses, tick)
                for name in sharded:
                    out[name] = self._score_sharded(name, everyone, all_p, all_r, tick)
        except BaseException:
            if background is not None:
                background.close()  # no requests left running into the next call
            raise
        if background is not None:
            out.update(background.result())
            n_served = sum(len(r) for r in responses) * len(served)
            self._stats["model_tokens"] += n_served
            tick.total += n_served
            tick(n_served)
        out = {n: out[n] for n in names}
        return ScoreResult(out, self._summary(responses, time.perf_counter() - t0))

    def _summary(self, responses: list[list[int]], seconds: float) -> dict[str, Any]:
        """The stats of one :meth:`score` call (``ScoreResult.stats``)."""
        s = self._stats
        return {
            "tokens": sum(len(r) for r in responses),
            "model_tokens": s["model_tokens"],
            "seconds": seconds,
            "tokens_per_s": s["model_tokens"] / seconds if seconds > 0 else 0.0,
            "padding_fraction": 1.0 - s["real"] / s["processed"] if s["processed"] else 0.0,
            "micro_batches": s["micro_batches"],
            "token_budget": s["token_budget"],  # the smallest this call used (out of memory)
            "peak_mem_gb": peak_memory_gb(self.device),
        }

    def hidden_states(
        self,
        prompt_ids: Sequence[Ids],
        response_ids: Sequence[Ids],
        names: Sequence[str],
        prompts_of: Mapping[str, Sequence[Ids]] | None = None,
    ) -> tuple[dict[str, list[torch.Tensor]], dict[str, OutputHead]]:
        """Final hidden states that predict each response token (``T_i × H`` per response, in
        host memory: the update moves each micro-batch's rows to the device) and each model's
        output head (on ``device``): what the dense loss needs to rebuild a model's full
        distributions chunk by chunk during the update, without keeping T×V logits. The same
        out-of-memory fallback and offload as :meth:`score`. ``local`` and ``offload``
        placements only (``shard`` would move T×H tensors between ranks: refused by the
        trainer's config check)."""
        if self.placement == "shard":
            raise ConfigError("hidden states need teacher_placement local or offload, not shard")
        if any(n in self.servers for n in names):
            raise ConfigError(
                "hidden states need local teachers: a served teacher gives log-probs only"
            )
        responses = [_as_list(r) for r in response_ids]
        own = self._own_prompts(prompts_of, names, responses)
        hidden: dict[str, list[torch.Tensor]] = {}
        heads: dict[str, OutputHead] = {}
        for name in names:
            prompts = own.get(name) or [_as_list(p) for p in prompt_ids]
            with self._on_device(name) as model, torch.no_grad():
                # no_grad, not inference_mode: the update saves them for its backward
                hidden[name], head = self._run_hidden(model, prompts, responses)
                heads[name] = _head_on(head, self.device)
        return hidden, heads

    def _run_hidden(
        self, model: torch.nn.Module, prompts: list[list[int]], responses: list[list[int]]
    ) -> tuple[list[torch.Tensor], OutputHead]:
        """Every response's hidden states through one model, to host memory, micro-batched."""
        lengths = [len(p) + len(r) for p, r in zip(prompts, responses, strict=True)]
        rows: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
        found = output_head(model)
        if found is None:
            raise ModelError(
                f"{type(model).__name__} exposes no base model and linear lm_head: the dense "
                "loss needs hidden states and an output head"
            )

        def run(idx: list[int], _chunk: int) -> torch.Tensor:
            h_NH, _ = response_hidden_states(
                model, [prompts[i] for i in idx], [responses[i] for i in idx]
            )
            return h_NH

        for idx, h_NH in self._micro_batches(lengths, False, run, chunked=False):
            for i, part in zip(idx, h_NH.split([len(responses[i]) for i in idx])):
                rows[i] = _to_host(part)
        _host_copies_done(self.device)
        head = found[1]
        return rows, head

    # -- internals -------------------------------------------------------------------------
    def _own_prompts(
        self,
        prompts_of: Mapping[str, Sequence[Ids]] | None,
        names: Sequence[str],
        responses: list[list[int]],
    ) -> dict[str, list[list[int]]]:
        """The checked per-model prompts of the models scored now (a sharded model has none:
        its owner scores every rank's sequences under one prompt list)."""
        own: dict[str, list[list[int]]] = {}
        for name, rows in (prompts_of or {}).items():
            if name not in names:
                continue
            if name in self.owner:
                raise ConfigError(
                    f"{name!r} has its own prompts (a context teacher): placement 'shard' "
                    "cannot score it; use local, offload or a served teacher"
                )
            own[name] = [_as_list(p) for p in rows]
            if len(own[name]) != len(responses):
                raise DataError(
                    f"{len(own[name])} prompts of {name!r} for {len(responses)} responses"
                )
            self._check_ids(own[name], responses)
        return own

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

    @contextlib.contextmanager
    def _on_device(self, name: str) -> Iterator[torch.nn.Module]:
        """Model ``name`` on the device for the ``with`` block; placement ``offload`` moves it
        there and back to host memory afterwards, whatever happens inside."""
        model = self.models[name]
        if self.placement == "offload":
            model.to(self.device)
        try:
            yield model
        finally:
            if self.placement == "offload":
                model.to("cpu")
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    def _score_model(
        self, name: str, prompts: list[list[int]], responses: list[list[int]], tick: _Ticker
    ) -> list[torch.Tensor]:
        with self._on_device(name) as model:
            return self._run(model, prompts, responses, tick)

    def _run(
        self,
        model: torch.nn.Module,
        prompts: list[list[int]],
        responses: list[list[int]],
        tick: _Ticker,
    ) -> list[torch.Tensor]:
        """All sequences through one model, micro-batch by micro-batch (:meth:`_micro_batches`)."""
        packed = self.packing == "on" or (self.packing == "auto" and uses_varlen_attention(model))
        lengths = [len(p) + len(r) for p, r in zip(prompts, responses, strict=True)]

        def run(idx: list[int], chunk: int) -> torch.Tensor:
            return model_response_logprobs(
                model,
                [prompts[i] for i in idx],
                [responses[i] for i in idx],
                chunk_size=chunk,
                temperature=self.temperature,
                packed=packed,
            )

        pending: list[tuple[list[int], torch.Tensor]] = []
        for idx, logp_BT in self._micro_batches(lengths, packed, run, chunked=True):
            pending.append((idx, _to_host(logp_BT)))
            self._stats["micro_batches"] += 1
            self._stats["processed"] += padded_tokens(lengths, [idx], packed)
            self._stats["real"] += sum(lengths[i] for i in idx)
            n_tok = sum(len(responses[i]) for i in idx)
            self._stats["model_tokens"] += n_tok
            tick(n_tok)
        _host_copies_done(self.device)
        out: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
        for idx, logp_BT in pending:
            for row, i in enumerate(idx):
                out[i] = logp_BT[row, : len(responses[i])].clone()
        return out

    def _micro_batches(
        self,
        lengths: list[int],
        packed: bool,
        run: Callable[[list[int], int], R],
        chunked: bool,
    ) -> Iterator[tuple[list[int], R]]:
        """``(idx, run(idx, chunk_size))`` for each micro-batch of at most the token budget.

        On ``torch.OutOfMemoryError`` the budget is halved and the micro-batch retried, down to
        a single sequence, then (``chunked``: ``run`` computes logits chunk by chunk) the chunk
        size; for the rest of this pass only: the next starts from the configured values."""
        budget, chunk = self.token_budget, self.chunk_size
        plan = plan_packed if packed else plan_padded
        queue = deque(plan(lengths, budget))
        while queue:
            idx = queue.popleft()
            oom = False
            try:
                result = run(idx, chunk)
            except torch.OutOfMemoryError:
                oom = True  # handled below, outside the except block, so the failed frame is freed
            if not oom:
                yield idx, result
                continue
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            used = padded_tokens(lengths, [idx], packed)
            if len(idx) > 1:
                budget = max(1, min(budget, used) // 2)
                if hasattr(self, "_stats"):
                    self._stats["token_budget"] = min(self._stats["token_budget"], budget)
                log.warning(
                    "out of memory on a micro-batch of %d tokens: token budget halved to %d "
                    "for this pass",
                    used,
                    budget,
                )
                sub = plan([lengths[i] for i in idx], budget)  # indexes into idx
                queue.extendleft(reversed([[idx[j] for j in group] for group in sub]))
            elif chunked and chunk > 16:
                chunk //= 2
                log.warning(
                    "out of memory on one sequence of %d tokens: chunk size halved to %d "
                    "for this pass",
                    used,
                    chunk,
                )
                queue.appendleft(idx)
            else:
                at = f" even at chunk size {chunk}" if chunked else ""
                raise ModelError(
                    f"out of memory scoring one sequence of {used} tokens{at}: use a bigger "
                    "device, placement 'offload', or a lower --dtype"
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


def _check_settings(placement: str, token_budget: int, chunk_size: int, packing: str) -> None:
    """One-line errors for a scorer's settings (before anything is placed on a device)."""
    if placement not in PLACEMENTS:
        raise ConfigError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    if token_budget < 1 or chunk_size < 1:
        raise ConfigError(
            f"token_budget and chunk_size must be >= 1, got {token_budget} and {chunk_size}"
        )
    if packing not in ("auto", "on", "off"):
        raise ConfigError(f"packing must be auto, on or off, got {packing!r}")


def _head_on(head: OutputHead, device: torch.device) -> OutputHead:
    """A detached copy of ``head`` on ``device`` (an offloaded model's head stays usable)."""
    weight = head.weight.detach().to(device)
    bias = head.bias.detach().to(device) if head.bias is not None else None
    return OutputHead(weight, bias, head.scale, head.softcap)


def _host_copies_done(device: torch.device) -> None:
    """Wait for :func:`_to_host`'s non-blocking copies (CUDA) before the host rows are read."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


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
            self.progress(Event("scoring", self.done, self.total))

"""Phase 1, rollout (and phase 6, sync): sample responses, then push new weights to the sampler.

Sampling settings come from the config (every knob explicit, docs/eval.md); the engine's own
sampling log-probs are requested when the truncated IS weight is on. Empty responses are
dropped (there is nothing to score). The engine is woken before and put to sleep after
generation (vLLM frees its KV cache for the update; no-ops for HF). With ``--max-staleness 1``
``rollout`` runs in a background thread (ahead.py) while the trainer works on the previous
batch; ``sync`` then runs only after that generation has finished.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from tcopd.errors import TrainingError
from tcopd.pipelines.train.data import derived_seed, rank_share, step_prompts
from tcopd.pipelines.train.setup import Trainer
from tcopd.runtime.generation.rollout import Completion, SamplingParams
from tcopd.runtime.generation.vllm_engine import shared_memory, state_bytes
from tcopd.runtime.models import lora
from tcopd.runtime.training.distributed import one_line


@dataclass(frozen=True)
class Rollouts:
    """This rank's non-empty completions of one step, with what grading and λ need per response."""

    completions: list[Completion]
    golds: list[str]
    domains: list[str | None]
    messages: list[list[dict[str, Any]]]  # each response's conversation (context teachers)
    version: int = 0  # the weights it was sampled with: the number of updates they had had

    @property
    def prompts(self) -> list[list[int]]:
        return [c.prompt_ids for c in self.completions]

    @property
    def responses(self) -> list[list[int]]:
        return [c.response_ids for c in self.completions]


def sampling_params(tr: Trainer, step: int) -> SamplingParams:
    cfg = tr.cfg
    return SamplingParams(
        n=cfg.samples_per_prompt,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_response_tokens,
        seed=derived_seed(cfg.seed, "sampling", step, tr.dist.rank),
        stop=(),
        logprobs=cfg.truncated_is,
    )


def rollout(tr: Trainer, step: int, version: int | None = None) -> Rollouts:
    """Sample ``samples_per_prompt`` responses to each of this rank's prompts of ``step``, with
    the engine's weights, which have had ``version`` updates (default ``step``: synchronous)."""
    cfg = tr.cfg
    idx = step_prompts(len(tr.data), cfg.batch_size, cfg.seed, step)
    idx = rank_share(idx, tr.dist.rank, tr.dist.world_size)
    tr.rollout.wake()
    comps = tr.rollout.generate([tr.data.ids[i] for i in idx], sampling_params(tr, step))
    tr.rollout.sleep()
    comps = [c for c in comps if c.response_ids]
    if not comps:
        raise TrainingError("every rollout was empty")
    return Rollouts(
        comps,
        [tr.data.golds[idx[c.prompt_index]] for c in comps],
        [tr.data.domains[idx[c.prompt_index]] for c in comps],
        [tr.data.messages[idx[c.prompt_index]] for c in comps],
        step if version is None else version,
    )


def sync(tr: Trainer) -> None:
    """Give the rollout engine the updated weights, when it samples from a copy of its own.

    Several vLLM engines on one node (one per rank) load one copy that the node's first rank
    writes to node-local memory, rather than one copy per rank. ``--lora``: only the adapter
    changes, so only the adapter travels; vLLM gets it as a PEFT adapter directory (it keeps
    the base weights and serves the adapter on top, docs/lora.md).
    """
    if not tr.rollout.needs_weight_sync:
        return
    # collective under ZeRO-3: every rank calls it
    state = tr.learner.full_state_dict(trainable_only=tr.lora_student is not None)
    if tr.lora_student is not None and tr.cfg.engine == "vllm":
        write = partial(lora.write_adapter, tr.lora_student)
        _through_directory(tr, state, write, tr.rollout.update_adapter)  # type: ignore[attr-defined]
    elif tr.dist.world_size == 1 or not hasattr(tr.rollout, "write_weights"):
        tr.rollout.update_weights(state)
    else:
        _through_directory(tr, state, tr.rollout.write_weights, tr.rollout.update_weights)


def _through_directory(
    tr: Trainer,
    state: dict[str, Any],
    write: Callable[[dict[str, Any], str], Any],
    load: Callable[[str], Any],
) -> None:
    """``write(state, directory)`` on each node's first rank (node-local memory), then
    ``load(directory)`` on every rank; the directory is removed afterwards."""
    leader = tr.dist.rank - tr.dist.local_rank  # torchrun numbers a node's ranks contiguously
    made = ""
    if tr.dist.local_rank == 0:
        made = tempfile.mkdtemp(prefix="tcopd-weights-", dir=shared_memory(state_bytes(state)))
    directory = str(tr.reduce.gather(made)[leader])
    try:
        write = write if tr.dist.local_rank == 0 else (lambda *_: None)
        _all_or_none(tr, "writing the weights", write, state, directory)
        _all_or_none(tr, "loading the weights", load, directory)
    finally:
        if made:
            shutil.rmtree(made, ignore_errors=True)


def _all_or_none(tr: Trainer, what: str, fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn`` on every rank; if it failed anywhere, every rank raises the first error (no
    rank is left waiting for another in a collective)."""
    error, cause = "", None
    try:
        fn(*args)
    except Exception as e:
        error, cause = f"weight sync failed {what} ({one_line(e)})", e
    tr.reduce.raise_any(error, cause)

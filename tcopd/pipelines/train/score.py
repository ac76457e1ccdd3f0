"""Phase 3, score: per-token log-probs of the rollouts under π_old, π_ref and every active teacher.

π_old is the student *at rollout time*, scored by the trainer (not the rollout engine's
log-probs, which differ slightly: those only enter the truncated IS weight). Every model is
scored at the rollout temperature (docs/algorithm.md), so π_θ / π_old is a ratio of the same
tempered policy the samples came from.

With ``--loss dense`` the teachers (and π_ref) are run once for their final hidden states, kept
in host memory for the update (which moves each micro-batch's rows to the device and rebuilds
their full distributions chunk by chunk); their sampled-token log-probs, for the reward and the
metrics, come from those hidden states through each head.

With ``--lora`` and no ``--reference``, π_ref is the policy itself with its adapters disabled
(``reference_forward`` around its forward, here: adapters off, eval mode): the base model's
weights, no copy.

A context teacher (``--teacher-prompt``) scores the same response ids after its own prompt ids
(:class:`~tcopd.runtime.scoring.contexts.ContextRenderer`, one rendering per conversation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tcopd.core.dense import Head
from tcopd.core.dense_support import ServedRows, common_support
from tcopd.pipelines.train.config import TrainConfig
from tcopd.pipelines.train.rollout import Rollouts
from tcopd.pipelines.train.setup import Trainer
from tcopd.runtime.models.lora import reference_forward
from tcopd.runtime.scoring import served as served_lib
from tcopd.runtime.scoring.forward import batched_response_logprobs


@dataclass(frozen=True)
class Scores:
    """Rows of per-token values, one per response (CPU, float32)."""

    old: list[torch.Tensor] | None  # None until known (on-policy: the update's forward gives it)
    entropy: list[torch.Tensor] | None  # of π_old's (tempered) distribution at each position
    models: dict[str, list[torch.Tensor]]  # each teacher, and "reference" unless π_ref cancels
    hidden: dict[str, list[torch.Tensor]] | None = None  # dense: T_i × H per response and model
    heads: dict[str, Head] | None = None  # dense: each model's output head (on the device)
    # dense with served teachers: per response, their common top-k support (core/dense_support)
    served: list[ServedRows] | None = None
    served_names: tuple[str, ...] = ()
    served_bytes: int = 0  # the servers' answers' bytes (this rank's)

    @property
    def teachers(self) -> dict[str, list[torch.Tensor]]:
        return {k: v for k, v in self.models.items() if k != "reference"}

    @property
    def reference(self) -> list[torch.Tensor] | None:
        """π_ref's rows; None when it cancels in the advantage (π_old then stands in for it)."""
        return self.models.get("reference")


def start_served(tr: Trainer, batch: Rollouts) -> served_lib.Background | None:
    """The served teachers' scoring of ``batch``, started in their own thread (None: no served
    teacher). :func:`score` starts it itself, or takes it already started (``--max-staleness
    1`` starts it as soon as the batch exists, while the previous batch trains)."""
    servers = tr.scorer.servers
    if not servers:
        return None
    own = tr.contexts.batch(batch.messages) if tr.contexts is not None else None
    mine = {n: p for n, p in (own or {}).items() if n in servers}
    top_k = (tr.cfg.served_top_k, tr.head_rows) if tr.cfg.loss == "dense" else None
    return served_lib.Background(servers, batch.prompts, batch.responses, mine, top_k)


def score(
    tr: Trainer,
    batch: Rollouts,
    with_old: bool = True,
    started: served_lib.Background | None = None,
) -> Scores:
    """``with_old=False`` (on-policy): π_old comes from the update's forward (update.py), and
    ``old`` / ``entropy`` stay None here. ``started``: :func:`start_served` of this batch
    (else it starts here, first: the servers answer while the local models run)."""
    if started is None:
        started = start_served(tr, batch)
    try:
        return _score(tr, batch, with_old, started)
    except BaseException:
        if started is not None:
            started.close()  # no requests left running into the next step
        raise


def _score(
    tr: Trainer, batch: Rollouts, with_old: bool, started: served_lib.Background | None
) -> Scores:
    cfg = tr.cfg
    if with_old:
        old, entropy = batched_response_logprobs(
            tr.policy,
            batch.prompts,
            batch.responses,
            cfg.score_token_budget,
            cfg.chunk_size,
            temperature=cfg.temperature,
        )
    else:
        old = entropy = None
    own = tr.contexts.batch(batch.messages) if tr.contexts is not None else None
    rows, names, wire = None, (), 0
    if cfg.loss == "dense":
        hidden, heads = _hidden_states(tr, batch, own)
        scored = {n: _sampled_logprobs(hidden[n], heads[n], batch, cfg) for n in hidden}
        if started is not None:
            tops = started.result()
            names = tuple(tops)
            rows = [
                common_support(
                    torch.stack([tops[n][i].ids_TK for n in names]),
                    torch.stack([tops[n][i].logprobs_TK for n in names]),
                    torch.stack([tops[n][i].token_T for n in names]),
                )
                for i in range(len(batch.responses))
            ]
            scored.update({n: [t.token_T for t in tops[n]] for n in names})
            wire = sum(t.bytes for n in names for t in tops[n])
    else:
        hidden = heads = None
        result = tr.scorer.score(
            batch.prompts, batch.responses, prompts_of=own, served_started=started
        )
        scored = dict(result.logprobs)
    if tr.adapter_reference is not None:
        _score_adapter_reference(tr, batch, scored, hidden, heads)
    return Scores(old, entropy, scored, hidden, heads, rows, names, wire)


def _score_adapter_reference(
    tr: Trainer,
    batch: Rollouts,
    scored: dict[str, list[torch.Tensor]],
    hidden: dict[str, list[torch.Tensor]] | None,
    heads: dict[str, Head] | None,
) -> None:
    """π_ref = the policy with its LoRA adapters off: its log-probs (and, dense, its hidden
    states and head) into ``scored`` (``hidden``, ``heads``) under the name ``reference``."""
    ref = tr.adapter_reference
    assert ref is not None
    with reference_forward(tr.policy):
        if hidden is None or heads is None:
            scored.update(ref.score(batch.prompts, batch.responses).logprobs)
            return
        h, raw = ref.hidden_states(batch.prompts, batch.responses, ["reference"])
    r = raw["reference"]
    hidden["reference"] = h["reference"]
    heads["reference"] = Head(r.weight, r.bias, r.scale, r.softcap)
    scored["reference"] = _sampled_logprobs(h["reference"], heads["reference"], batch, tr.cfg)


def _hidden_states(
    tr: Trainer, batch: Rollouts, own: dict[str, list[list[int]]] | None
) -> tuple[dict[str, list[torch.Tensor]], dict[str, Head]]:
    local = [n for n in tr.scorer.names if n not in tr.scorer.servers]
    hidden, raw = tr.scorer.hidden_states(batch.prompts, batch.responses, local, own)
    heads = {n: Head(h.weight, h.bias, h.scale, h.softcap) for n, h in raw.items()}
    return hidden, heads


def _sampled_logprobs(
    hidden: list[torch.Tensor], head: Head, batch: Rollouts, cfg: TrainConfig
) -> list[torch.Tensor]:
    """Each response's sampled-token log-probs from a model's stored hidden states (host
    memory), moved to the head's device a slice of responses at a time (at most
    ``train_token_budget`` tokens, or one response)."""
    w = head.weight_VH
    device = w.device if isinstance(w, torch.Tensor) else None
    out: list[torch.Tensor] = []
    start = 0
    while start < len(hidden):
        end, tokens = start + 1, len(hidden[start])
        while end < len(hidden) and tokens + len(hidden[end]) <= cfg.train_token_budget:
            tokens += len(hidden[end])
            end += 1
        h_NH = torch.cat(hidden[start:end])
        h_NH = h_NH.to(device) if device is not None else h_NH
        targets = torch.tensor([t for r in batch.responses[start:end] for t in r])
        with torch.no_grad():
            lp_N = head.token_logprobs(h_NH, targets, cfg.temperature, cfg.chunk_size)
        out += [x.float().cpu() for x in lp_N.split([len(h) for h in hidden[start:end]])]
        start = end
    return out

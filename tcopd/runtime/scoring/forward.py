"""The π_θ forward: per-token log-probs of responses under one model, without T×V logits.

:func:`model_response_logprobs` scores one micro-batch under one model: the base model gives the
final hidden states, and only the positions that predict a response token go through the output
projection, chunk by chunk (:func:`tcopd.core.logprobs.token_logprobs`). It records autograd when
grad is enabled, so the trainer's update uses it for π_θ, and :class:`~tcopd.runtime.scoring.scorer.Scorer`
uses it (no grad) for π_old, π_ref and the teachers. :func:`batched_response_logprobs` runs it
over many responses in token-budget micro-batches, without grad.

Temperature τ: logits are divided by τ before the softmax, so every model can be scored at the
rollout temperature (docs/algorithm.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tcopd.core.batching import plan_padded
from tcopd.core.logprobs import token_logprobs
from tcopd.errors import DataError, ModelError

Ids = Sequence[int] | torch.Tensor


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
    prompts, responses = _checked_pairs(prompt_ids, response_ids)
    device = _model_device(model)
    B = len(prompts)
    T = max(len(r) for r in responses)
    inputs, pred_pos, out_pos = _batch_inputs(prompts, responses, packed)
    inputs = {k: _to_device(v, device) for k, v in inputs.items()}
    pred_idx = _to_device(torch.tensor(pred_pos, dtype=torch.long), device)
    out_idx = _to_device(torch.tensor(out_pos, dtype=torch.long), device)
    targets_N = _to_device(
        torch.tensor([t for r in responses for t in r], dtype=torch.long), device
    )
    found = output_head(model)
    if found is not None:
        hidden = found[0](**inputs, use_cache=False).last_hidden_state
        hidden_NH = hidden.reshape(-1, hidden.shape[-1]).index_select(0, pred_idx)
        result = _head_logprobs(
            hidden_NH, found[1], targets_N, chunk_size, temperature, return_entropy
        )
    else:
        # Fallback: the model computes every logit itself (whatever transform it applies).
        logits = model(**inputs, use_cache=False).logits
        logits_NV = logits.reshape(-1, logits.shape[-1]).index_select(0, pred_idx)
        result = _full_logprobs(logits_NV, targets_N, temperature, return_entropy)
    logp_N, ent_N = result if return_entropy else (result, None)
    logp_BT = logp_N.new_zeros(B * T).index_copy(0, out_idx, logp_N).view(B, T)
    if ent_N is None:
        return logp_BT
    return logp_BT, ent_N.new_zeros(B * T).index_copy(0, out_idx, ent_N).view(B, T)


def _checked_pairs(
    prompt_ids: Sequence[Ids], response_ids: Sequence[Ids]
) -> tuple[list[list[int]], list[list[int]]]:
    """The prompts and responses as lists; one line when they do not pair up or one is empty."""
    prompts = [_as_list(p) for p in prompt_ids]
    responses = [_as_list(r) for r in response_ids]
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    for b, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        if not p or not r:
            raise DataError(
                f"sequence {b}: the prompt and the response each need at least one token"
            )
    return prompts, responses


def _head_logprobs(
    hidden_NH: torch.Tensor,
    head: OutputHead,
    targets_N: torch.Tensor,
    chunk_size: int,
    temperature: float,
    return_entropy: bool,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``token_logprobs`` through the model's output head, chunked over the N positions."""
    # A ZeRO-3-partitioned head keeps only a shard outside its forward: call the module.
    partitioned = hasattr(head.weight, "ds_id")
    return token_logprobs(
        hidden_NH,
        head.module if partitioned else head.weight,
        targets_N,
        chunk_size=chunk_size,
        temperature=temperature,
        softcap=head.softcap,
        bias_V=None if partitioned else head.bias,
        scale=head.scale,
        return_entropy=return_entropy,
        # ZeRO-3 does not re-gather a frozen head (LoRA) inside a checkpointed chunk's
        # recompute: keep each chunk's logits for the backward instead (more memory)
        checkpoint=False if partitioned and not head.weight.requires_grad else None,
    )


def _full_logprobs(
    logits_NV: torch.Tensor, targets_N: torch.Tensor, temperature: float, return_entropy: bool
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-probs (and entropies) of the targets from full logits, ``(N, V)`` at once."""
    lsm_NV = torch.log_softmax(logits_NV.float() / temperature, dim=-1)
    logp = lsm_NV.gather(-1, targets_N.unsqueeze(-1)).squeeze(-1)
    return (logp, -(lsm_NV.exp() * lsm_NV).sum(-1)) if return_entropy else logp


def _batch_inputs(
    prompts: list[list[int]], responses: list[list[int]], packed: bool
) -> tuple[dict[str, torch.Tensor], list[int], list[int]]:
    """Model inputs for ``prompt + response`` rows, the flat positions (in the model's rows × L
    output) of the hidden states that predict each response token, and each token's flat
    position in a ``(B, T)`` result (T = the longest response)."""
    B = len(prompts)
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses, strict=True)]
    T = max(len(r) for r in responses)
    pred_pos: list[int] = []
    out_pos: list[int] = []
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
        return {"input_ids": ids, "position_ids": pos}, pred_pos, out_pos
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
    return {"input_ids": ids, "attention_mask": mask}, pred_pos, out_pos


def response_hidden_states(
    model: torch.nn.Module, prompt_ids: Sequence[Ids], response_ids: Sequence[Ids]
) -> tuple[torch.Tensor, OutputHead]:
    """``hidden_NH``: the final hidden states that predict each response token, responses
    concatenated in order (N = Σ len(response_b)), and the model's output head. Differentiable
    when grad is enabled (the dense loss's π_θ); raises ModelError for a model without a base
    model and a linear head."""
    found = output_head(model)
    if found is None:
        raise ModelError(
            f"{type(model).__name__} exposes no base model and linear lm_head: the dense loss "
            "needs hidden states and an output head"
        )
    base, head = found
    prompts = [_as_list(p) for p in prompt_ids]
    responses = [_as_list(r) for r in response_ids]
    inputs, pred_pos, _ = _batch_inputs(prompts, responses, packed=False)
    device = _model_device(model)
    inputs = {k: _to_device(v, device) for k, v in inputs.items()}
    hidden = base(**inputs, use_cache=False).last_hidden_state
    pred_idx = _to_device(torch.tensor(pred_pos, dtype=torch.long), device)
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, pred_idx), head


def batched_response_logprobs(
    model: torch.nn.Module,
    prompts: list[list[int]],
    responses: list[list[int]],
    token_budget: int,
    chunk_size: int,
    temperature: float = 1.0,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Log-probs and per-token entropies of each response (no grad, eval mode), micro-batched."""
    logp: list[torch.Tensor] = [torch.empty(0)] * len(responses)
    ent: list[torch.Tensor] = [torch.empty(0)] * len(responses)
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for idx in plan_padded(lengths, token_budget):
                lp_BT, ent_BT = model_response_logprobs(
                    model,
                    [prompts[i] for i in idx],
                    [responses[i] for i in idx],
                    chunk_size,
                    temperature=temperature,
                    return_entropy=True,
                )
                for row, i in enumerate(idx):
                    n = len(responses[i])
                    logp[i] = lp_BT[row, :n].cpu()
                    ent[i] = ent_BT[row, :n].cpu()
    finally:
        model.train(was_training)  # an error (out of memory) leaves the mode as it was
    return logp, ent

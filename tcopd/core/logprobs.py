"""Token log-probabilities from final hidden states, without materialising the N×V logits.

Shape legend: N scored tokens (flattened over responses), H hidden size, V vocabulary, C a chunk
of tokens. For each chunk of C rows of ``hidden_NH`` the output projection gives ``logits_CV``;
we keep only ``logit[y] − logsumexp(logits)`` (a float32 log-softmax, gathered) and drop the chunk, so peak extra
memory is O(C × V) whatever N is (docs/score.md). With ``checkpoint=True`` the chunk's logits are
recomputed during backward instead of being saved, so training memory is O(C × V) as well.

The logit transform, applied in this order, covers the HF architectures we know of:

    z = h · Wᵀ (+ b)                 output projection (tied or not: W is whatever lm_head uses)
    z = z · scale                    ``logit_scale`` (Cohere); Granite's ``1/logits_scaling``
    z = c · tanh(z / c)              final soft-capping, c = ``final_logit_softcapping`` (Gemma 2/3)
    z = z / τ                        sampling temperature τ (docs/eval.md: the sampler's τ)
    log p(y) = z[y] − logsumexp(z)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint


def _chunk_logprobs(
    hidden_CH: torch.Tensor,
    weight_VH: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    targets_C: torch.Tensor,
    bias_V: torch.Tensor | None,
    scale: float,
    softcap: float | None,
    temperature: float,
    with_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log p(y)`` (and the entropy of p) for one chunk; logits live only inside this call."""
    # The projection runs in the model's dtype (bf16 on GPU, as the HF forward does); everything
    # after it runs in float32 so that the log-sum-exp over 152k entries does not lose precision.
    if callable(
        weight_VH
    ):  # a projection module (ZeRO-3: its weight exists only inside its forward)
        logits_CV = weight_VH(hidden_CH).float()
    else:
        logits_CV = torch.nn.functional.linear(hidden_CH, weight_VH, bias_V).float()
    if scale != 1.0:
        logits_CV = logits_CV * scale
    if softcap is not None:
        logits_CV = torch.tanh(logits_CV / softcap) * softcap
    if temperature != 1.0:
        logits_CV = logits_CV / temperature
    # One fused log_softmax over the chunk (measured faster on CPU than logsumexp + gather),
    # then the target column; the chunk's C×V buffer is dropped on return.
    lsm_CV = torch.log_softmax(logits_CV, dim=-1)
    logp_C = lsm_CV.gather(-1, targets_C.unsqueeze(-1)).squeeze(-1)
    if with_entropy:
        entropy_C = -(lsm_CV.exp() * lsm_CV).sum(-1)  # H(p) = −Σ p·log p
    else:
        entropy_C = logp_C.new_zeros(())
    return logp_C, entropy_C


def token_logprobs(
    hidden_NH: torch.Tensor,
    weight_VH: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    targets_N: torch.Tensor,
    chunk_size: int = 512,
    temperature: float = 1.0,
    softcap: float | None = None,
    bias_V: torch.Tensor | None = None,
    scale: float = 1.0,
    checkpoint: bool | None = None,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``logp_N[i] = log softmax(transform(hidden_NH[i] · Wᵀ))[targets_N[i]]`` in float32.

    ``hidden_NH`` are final (normed) hidden states at the positions that *predict* each target;
    ``weight_VH`` the output projection (the input embedding for tied models). See the module
    docstring for ``scale``, ``softcap`` and ``temperature``. Differentiable with respect to
    ``hidden_NH``, ``weight_VH`` and ``bias_V``. ``checkpoint`` (default: whenever autograd
    records) recomputes each chunk in backward so no chunk's logits are kept. With
    ``return_entropy`` also returns ``entropy_N`` (nats) of the same distributions.
    ``weight_VH`` may instead be a callable projection ``hidden_CH → logits_CV`` (e.g. the
    ``lm_head`` module itself, called per chunk: under ZeRO-3 its weight is gathered only inside
    the module's own forward); the bias is then the module's business.
    """
    if hidden_NH.dim() != 2 or targets_N.dim() != 1 or hidden_NH.shape[0] != targets_N.shape[0]:
        raise ValueError(
            f"expected hidden_NH (N, H) and targets_N (N,), got {tuple(hidden_NH.shape)} and {tuple(targets_N.shape)}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if softcap is not None and softcap <= 0:
        raise ValueError(f"softcap must be > 0, got {softcap}")
    grad = torch.is_grad_enabled() and (
        hidden_NH.requires_grad
        or callable(weight_VH)
        or weight_VH.requires_grad
        or (bias_V is not None and bias_V.requires_grad)
    )
    use_ckpt = grad if checkpoint is None else (checkpoint and grad)
    targets_N = targets_N.to(device=hidden_NH.device, dtype=torch.long)
    logps, ents = [], []
    for start in range(0, hidden_NH.shape[0], chunk_size):
        args = (
            hidden_NH[start : start + chunk_size],
            weight_VH,
            targets_N[start : start + chunk_size],
            bias_V,
            float(scale),
            softcap,
            float(temperature),
            return_entropy,
        )
        if use_ckpt:
            logp_C, ent_C = _checkpoint(_chunk_logprobs, *args, use_reentrant=False)
        else:
            logp_C, ent_C = _chunk_logprobs(*args)
        logps.append(logp_C)
        ents.append(ent_C)
    if not logps:
        empty = hidden_NH.new_zeros((0,), dtype=torch.float32)
        return (empty, empty.clone()) if return_entropy else empty
    logp_N = torch.cat(logps)
    if return_entropy:
        return logp_N, torch.cat(ents)
    return logp_N


def reference_logprobs(
    logits_NV: torch.Tensor, targets_N: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """The plain path, ``log_softmax(logits / τ).gather(targets)`` in float32 (for comparison)."""
    logits = logits_NV.float()
    if temperature != 1.0:
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, targets_N.long().unsqueeze(-1)).squeeze(-1)

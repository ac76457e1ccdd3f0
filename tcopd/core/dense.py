"""The dense TC-OPD loss: β · KL(π_θ ‖ p*) at every position, summed over the whole vocabulary.

Shape legend (docs/algorithm.md): N positions that predict response tokens (flattened), H a
hidden size (each model may have its own), V vocabulary, K teachers, C a chunk of positions.

At every position t the KL-regularised objective (paper eq. 1 with KL weight β and the reward of
eq. 11, ``w_k = λ_k / K_eff`` as in ``objective.teacher_weights``) is maximised by
``π_ref · exp(r/β) / Z`` (eq. 2), the product of experts of eq. 10 (which is the case β = 1):

    log p*_t(v) = log π_ref(v) + (1/β) Σ_k w_k (log π_k(v) − log π_ref(v)) − log Z_t

and the dense loss is, per position,

    kl_t = β · Σ_v π_θ(v) (log π_θ(v) − log p*_t(v)) = β · KL(π_θ ‖ p*_t)

Every log π is the log-softmax of that model's transformed logits (the transform of
``core/logprobs.py``: ``z = s·(h·Wᵀ + b)``, soft-capped ``c·tanh(z/c)``, divided by τ), in
float32 after the projection. Because ``log π_M = z_M − logsumexp(z_M)`` and the per-position
constants vanish in the final renormalisation, the target is one log-softmax of a weighted sum of
transformed logits,

    log p*_t = log_softmax((1 − Σ_k w_k/β) · z_ref + Σ_k (w_k/β) · z_k)

so the K + 1 frozen models need one accumulator and one log-softmax, not K + 1 log-softmaxes.
When Σ_k w_k = β at every position (OPD, or weights that sum to β) the reference drops out.

Padded vocabularies: a model's head may have more rows than its tokenizer has tokens (Qwen3:
V = 151,936 rows, 151,669 tokens). No tokenizer emits those ids and the sampled loss never sees
them, but a negative coefficient (any λ_k < 0, or 1 − Σ_k w_k/β < 0) can give them mass in p*.
With ``vocab_size`` set, only the first ``vocab_size`` columns take part: π_θ and p* are both
renormalised over the real tokens, and the rows past them get no gradient.

Memory: positions are walked in chunks of C; each chunk is checkpointed when autograd records,
so backward recomputes its logits and extra memory is O(C × V), never O(N × V), whatever N is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from tcopd.core.logprobs import token_logprobs


@dataclass(frozen=True)
class Head:
    """What turns final hidden states into logits: ``z = c·tanh(scale·(h·Wᵀ + b)/c) / τ``.

    ``weight_VH`` is the output projection (the input embedding for tied models), or a callable
    projection ``hidden_CH → logits_CV`` (the ``lm_head`` module itself, e.g. under ZeRO-3; the
    bias is then the module's business). ``scale`` and ``softcap`` as in ``core/logprobs.py``.
    """

    weight_VH: torch.Tensor | Callable[[torch.Tensor], torch.Tensor]
    bias_V: torch.Tensor | None = None
    scale: float = 1.0
    softcap: float | None = None

    def token_logprobs(
        self,
        hidden_NH: torch.Tensor,
        targets_N: torch.Tensor,
        temperature: float = 1.0,
        chunk_size: int = 512,
        return_entropy: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The sampled tokens' log-probs (and entropies) under this head (``core/logprobs.py``)."""
        return token_logprobs(
            hidden_NH,
            self.weight_VH,
            targets_N.to(hidden_NH.device),
            chunk_size=chunk_size,
            temperature=temperature,
            softcap=self.softcap,
            bias_V=self.bias_V,
            scale=self.scale,
            return_entropy=return_entropy,
        )

    def logits(self, hidden_CH: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """``logits_CV`` after the full transform, float32 (float64 for float64 inputs)."""
        # The projection runs in the model's dtype, the rest in at least float32 (as logprobs.py).
        if callable(self.weight_VH):
            z_CV = self.weight_VH(hidden_CH)
        else:
            z_CV = torch.nn.functional.linear(hidden_CH, self.weight_VH, self.bias_V)
        z_CV = z_CV.to(torch.promote_types(z_CV.dtype, torch.float32))
        if self.scale != 1.0:
            z_CV = z_CV * self.scale
        if self.softcap is not None:
            z_CV = torch.tanh(z_CV / self.softcap) * self.softcap
        if temperature != 1.0:
            z_CV = z_CV / temperature
        return z_CV


def _add_logits(
    acc_CV: torch.Tensor | None,
    hidden_CH: torch.Tensor,
    head: Head,
    coef_C: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """``acc_CV + coef_C · z_CV`` (z the head's transformed logits), in place when ``acc_CV`` exists."""
    w = head.weight_VH
    linear = not callable(w) and head.softcap is None and w.dtype in (torch.float32, torch.float64)
    if linear and (acc_CV is None or acc_CV.dtype == w.dtype):
        # z is linear in h: fold coef·scale/τ into the rows of h and let the matmul accumulate
        # into acc, so this model makes no C×V buffer (on CPU, page faults are half the cost).
        # Not for bf16/fp16 heads: their projection stays in the model dtype, as in logprobs.py.
        a_C = (coef_C * (head.scale / temperature)).to(w.dtype)
        if acc_CV is None:
            acc_CV = torch.mm(hidden_CH * a_C[:, None], w.T)
        else:
            acc_CV.addmm_(hidden_CH * a_C[:, None], w.T)
        if head.bias_V is not None:
            acc_CV.addr_(a_C, head.bias_V.to(w.dtype))
        return acc_CV
    z_CV = head.logits(hidden_CH, temperature)
    z_CV.mul_(coef_C.to(z_CV.dtype)[:, None])  # z_CV is fresh (no grad): in place
    return z_CV if acc_CV is None else acc_CV.add_(z_CV)


def target_logprobs(
    teacher_hidden: Sequence[torch.Tensor],
    teacher_heads: Sequence[Head],
    ref_hidden_CH: torch.Tensor | None,
    ref_head: Head | None,
    w_CK: torch.Tensor,
    beta: float,
    temperature: float,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """``log p*_CV = log_softmax((1 − Σ_k w_k/β)·z_ref + Σ_k (w_k/β)·z_k)``, without grad.

    The module docstring derives it from eq. 10. With ``ref_hidden_CH = None`` the caller
    guarantees Σ_k w_k = β, so the reference's coefficient is 0 and it is not computed.
    ``vocab_size``: over the first ``vocab_size`` columns only (``C × vocab_size``).
    """
    with torch.no_grad():
        coef_CK = w_CK / beta
        acc_CV = None
        for k, (hidden_CH, head) in enumerate(zip(teacher_hidden, teacher_heads)):
            acc_CV = _add_logits(acc_CV, hidden_CH, head, coef_CK[:, k], temperature)
        if ref_hidden_CH is not None and ref_head is not None:
            coef_C = 1.0 - coef_CK.sum(dim=-1)
            acc_CV = _add_logits(acc_CV, ref_hidden_CH, ref_head, coef_C, temperature)
        assert acc_CV is not None
        if vocab_size is not None:
            acc_CV = acc_CV[:, :vocab_size]
        return torch.log_softmax(acc_CV, dim=-1)


class _ReverseKL(torch.autograd.Function):
    """``kl_C = β · Σ_v π_θ (log π_θ − log q)`` from student logits and a fixed ``log q``.

    ``logq_CV`` is consumed (overwritten). Closed-form backward, saving two C×V buffers:
    ``∂kl_t/∂z_t = β · π_θ ⊙ (log π_θ − log q − KL_t)``.
    """

    @staticmethod
    def forward(ctx, z_CV: torch.Tensor, logq_CV: torch.Tensor, beta: float) -> torch.Tensor:
        # logq_CV is the caller's own no-grad buffer and is overwritten; logp is exponentiated in
        # place: on CPU a fresh C×V buffer costs as much as the arithmetic on it.
        logp_CV = torch.log_softmax(z_CV, dim=-1)
        diff_CV = logq_CV.neg_().add_(logp_CV)
        p_CV = logp_CV.exp_()
        kl_C = torch.linalg.vecdot(p_CV, diff_CV)  # no C×V product buffer
        ctx.save_for_backward(p_CV, diff_CV, kl_C)
        ctx.beta = beta
        return kl_C * beta

    @staticmethod
    def backward(ctx, grad_C: torch.Tensor):
        p_CV, diff_CV, kl_C = ctx.saved_tensors
        g_CV = diff_CV - kl_C.unsqueeze(-1)
        g_CV.mul_(p_CV).mul_((grad_C * ctx.beta).unsqueeze(-1))
        return g_CV, None, None


def _chunk_kl(
    student_hidden_CH: torch.Tensor,
    student_head: Head,
    teacher_hidden: tuple[torch.Tensor, ...],
    teacher_heads: tuple[Head, ...],
    ref_hidden_CH: torch.Tensor | None,
    ref_head: Head | None,
    w_CK: torch.Tensor,
    beta: float,
    temperature: float,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """``kl_C`` for one chunk; every C×V buffer lives only inside this call."""
    z_CV = student_head.logits(student_hidden_CH, temperature)
    if vocab_size is not None:
        z_CV = z_CV[:, :vocab_size]
    logq_CV = target_logprobs(
        teacher_hidden, teacher_heads, ref_hidden_CH, ref_head, w_CK, beta, temperature, vocab_size
    )
    if logq_CV.shape != z_CV.shape:
        raise ValueError(
            f"student logits {tuple(z_CV.shape)} and target {tuple(logq_CV.shape)} differ: "
            "every head must project onto the same vocabulary"
        )
    return _ReverseKL.apply(z_CV, logq_CV.to(z_CV.dtype), beta)  # consumes logq_CV


def records_grad(hidden_NH: torch.Tensor, head: Head) -> bool:
    """Whether autograd records through the student's hidden states or head (checkpoint then)."""
    w = head.weight_VH
    return torch.is_grad_enabled() and (
        hidden_NH.requires_grad
        or callable(w)
        or w.requires_grad
        or (head.bias_V is not None and head.bias_V.requires_grad)
    )


def over_chunks(
    fn: Callable[..., Any],
    N: int,
    chunk_size: int,
    grad: bool,
    args_at: Callable[[int, int], tuple],
) -> list[Any]:
    """``fn(*args_at(s, e))`` for each chunk ``[s, e)`` of ``N`` positions, each checkpointed when
    ``grad`` (backward recomputes it: extra memory is one chunk's, whatever N is)."""
    out = []
    for s in range(0, N, chunk_size):
        args = args_at(s, s + chunk_size)
        out.append(_checkpoint(fn, *args, use_reentrant=False) if grad else fn(*args))
    return out


def _vocab_and_hidden(head: Head) -> tuple[int, int] | None:
    w = head.weight_VH
    return None if callable(w) else (w.shape[0], w.shape[1])


def _validate(
    student_hidden_NH: torch.Tensor,
    student_head: Head,
    teacher_hidden: Sequence[torch.Tensor],
    teacher_heads: Sequence[Head],
    ref_hidden_NH: torch.Tensor | None,
    ref_head: Head | None,
    w_NK: torch.Tensor,
    beta: float,
    temperature: float,
    chunk_size: int,
    vocab_size: int | None = None,
) -> None:
    if vocab_size is not None and vocab_size < 1:
        raise ValueError(f"vocab_size must be ≥ 1, got {vocab_size}")
    if student_hidden_NH.dim() != 2:
        raise ValueError(f"student_hidden_NH must be (N, H), got {tuple(student_hidden_NH.shape)}")
    N = student_hidden_NH.shape[0]
    K = len(teacher_hidden)
    if K == 0 or len(teacher_heads) != K:
        raise ValueError(
            f"need K ≥ 1 teachers with one head each, got {K} hidden tensors and {len(teacher_heads)} heads"
        )
    if (ref_hidden_NH is None) != (ref_head is None):
        raise ValueError("ref_hidden_NH and ref_head must be given together (or both None)")
    if tuple(w_NK.shape) != (N, K):
        raise ValueError(f"w_NK must be (N, K) = ({N}, {K}), got {tuple(w_NK.shape)}")
    if not (beta > 0 and temperature > 0 and chunk_size >= 1):
        raise ValueError(
            f"need beta > 0, temperature > 0, chunk_size ≥ 1; got {beta}, {temperature}, {chunk_size}"
        )
    named = [("student", student_hidden_NH, student_head)]
    named += [
        (f"teacher {k}", h, hd) for k, (h, hd) in enumerate(zip(teacher_hidden, teacher_heads))
    ]
    if ref_hidden_NH is not None:
        named.append(("ref", ref_hidden_NH, ref_head))
    vocabs = set()
    for name, hidden, head in named:
        if hidden.dim() != 2 or hidden.shape[0] != N:
            raise ValueError(f"{name} hidden must be (N={N}, H), got {tuple(hidden.shape)}")
        if head.softcap is not None and head.softcap <= 0:
            raise ValueError(f"{name} head: softcap must be > 0, got {head.softcap}")
        vh = _vocab_and_hidden(head)
        if vh is not None:
            if vh[1] != hidden.shape[1]:
                raise ValueError(
                    f"{name}: hidden size {hidden.shape[1]} does not match its head weight (V, H) = {vh}"
                )
            vocabs.add(vh[0])
    if len(vocabs) > 1:
        raise ValueError(f"all heads must share one vocabulary, got sizes {sorted(vocabs)}")
    if vocab_size is not None and vocabs and vocab_size > min(vocabs):
        raise ValueError(f"vocab_size {vocab_size} exceeds the heads' {min(vocabs)} rows")
    if ref_hidden_NH is None and N > 0:
        # The reference's coefficient 1 − Σ_k w_k/β must vanish for it to be left out.
        gap = (w_NK.double().sum(dim=-1) - beta).abs().max().item()
        if gap > 1e-5 * max(1.0, abs(beta)):
            raise ValueError(
                f"without a reference model the weights must sum to β = {beta} at every position "
                f"(largest |Σ_k w_k − β| = {gap:.3g}); pass ref_hidden_NH and ref_head"
            )


def dense_kl(
    student_hidden_NH: torch.Tensor,
    student_head: Head,
    teacher_hidden: Sequence[torch.Tensor],
    teacher_heads: Sequence[Head],
    ref_hidden_NH: torch.Tensor | None,
    ref_head: Head | None,
    w_NK: torch.Tensor,
    beta: float = 1.0,
    temperature: float = 1.0,
    chunk_size: int = 512,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """``kl_N[t] = β · KL(π_θ(·|t) ‖ p*_t)``, the dense TC-OPD loss per position (module docstring).

    ``student_hidden_NH`` are the student's final hidden states at the N positions that predict
    response tokens; ``teacher_hidden`` K tensors ``(N, H_k)`` of the teachers at the same
    positions, ``ref_hidden_NH`` the reference's (``None`` when Σ_k w_k = β at every position:
    then the reference cancels exactly and is not computed; otherwise ``ValueError``). ``w_NK``
    are the per-position teacher weights λ_k / K_eff. Each model's logits come from its
    :class:`Head` and the shared sampling temperature τ. Returns ``kl_N`` in float32 (float64 for
    float64 inputs), differentiable with respect to the student's hidden states and head only:
    teacher and reference logits are computed under ``no_grad``. Reduce it (mask, token-mean) as
    the policy loss is reduced. Each chunk of ``chunk_size`` positions is checkpointed when
    autograd records, so peak extra memory is O(chunk_size × V). ``vocab_size`` (the
    tokenizer's size, when the heads have padding rows past it): π_θ and p* over the first
    ``vocab_size`` tokens only (module docstring).
    """
    _validate(
        student_hidden_NH,
        student_head,
        teacher_hidden,
        teacher_heads,
        ref_hidden_NH,
        ref_head,
        w_NK,
        beta,
        temperature,
        chunk_size,
        vocab_size,
    )
    kls = over_chunks(
        _chunk_kl,
        student_hidden_NH.shape[0],
        chunk_size,
        records_grad(student_hidden_NH, student_head),
        lambda s, e: (
            student_hidden_NH[s:e],
            student_head,
            tuple(h[s:e] for h in teacher_hidden),
            tuple(teacher_heads),
            None if ref_hidden_NH is None else ref_hidden_NH[s:e],
            ref_head,
            w_NK[s:e],
            float(beta),
            float(temperature),
            vocab_size,
        ),
    )
    if not kls:
        dtype = torch.promote_types(student_hidden_NH.dtype, torch.float32)
        return student_hidden_NH.new_zeros((0,), dtype=dtype)
    return torch.cat(kls)

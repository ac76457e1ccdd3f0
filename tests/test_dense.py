"""core.dense against an independent float64 full-logits computation (plain formulas, no chunks).

The reference materialises the (N, V) log-softmax of every model in float64, forms the target
``log_softmax(lsm_ref + (1/β) Σ_k w_k (lsm_k − lsm_ref))`` and ``β Σ_v p_θ (lsm_θ − log p*)``,
and gets gradients from autograd on float64 leaves.
"""

from __future__ import annotations

import pytest
import torch

from tcopd.core.dense import Head, dense_kl
from tcopd.core.logprobs import token_logprobs
from tcopd.core.objective import teacher_weights

V = 101


def z64(hidden, head, tau=1.0):
    """The logit transform of core/logprobs.py, written out in float64."""
    z = hidden.double() @ head.weight_VH.double().T
    if head.bias_V is not None:
        z = z + head.bias_V.double()
    z = z * head.scale
    if head.softcap is not None:
        z = torch.tanh(z / head.softcap) * head.softcap
    return z / tau


def ref_kl64(s_h, s_head, t_hs, t_heads, r_h, r_head, w, beta=1.0, tau=1.0):
    lsm_s = torch.log_softmax(z64(s_h, s_head, tau), -1)
    lsm_t = [torch.log_softmax(z64(h, hd, tau), -1) for h, hd in zip(t_hs, t_heads)]
    w = w.double()
    if r_h is None:
        target = sum(w[:, k : k + 1] * lsm_t[k] for k in range(len(lsm_t))) / beta
    else:
        lsm_r = torch.log_softmax(z64(r_h, r_head, tau), -1)
        target = lsm_r + sum(w[:, k : k + 1] * (lsm_t[k] - lsm_r) for k in range(len(lsm_t))) / beta
    logp_star = torch.log_softmax(target, -1)
    return beta * (lsm_s.exp() * (lsm_s - logp_star)).sum(-1)


def make(N=37, hs=(16, 24, 8), r_H=16, dtype=torch.float64, seed=0, **head_kw):
    """Student (H=16), teachers with their own hidden sizes, a reference; all random."""
    g = torch.Generator().manual_seed(seed)

    def model(H, kw=None):
        head = Head(
            (torch.randn(V, H, generator=g) * 0.6).to(dtype), **(kw or {})
        )  # logits of spread ~2
        return torch.randn(N, H, generator=g).to(dtype), head

    s_h, s_head = model(hs[0], head_kw.get("student"))
    teachers = [model(H, head_kw.get("teacher")) for H in hs[1:]]
    r_h, r_head = model(r_H, head_kw.get("ref"))
    s_h.requires_grad_(True)
    s_head.weight_VH.requires_grad_(True)
    upstream = torch.rand(N, generator=g).to(dtype)  # non-uniform: per-position grads matter
    return s_h, s_head, [t[0] for t in teachers], [t[1] for t in teachers], r_h, r_head, upstream


def value_and_grads(fn, s_h, s_head, upstream):
    """``kl_N`` and the gradients of Σ_t a_t kl_t w.r.t. the student hidden and head weight."""
    kl = fn(s_h, s_head)
    gh, gw = torch.autograd.grad((kl * upstream).sum(), (s_h, s_head.weight_VH))
    return kl.detach(), gh, gw


def leaves64(s_h, s_head):
    h = s_h.detach().double().requires_grad_(True)
    head = Head(
        s_head.weight_VH.detach().double().requires_grad_(True),
        s_head.bias_V,
        s_head.scale,
        s_head.softcap,
    )
    return h, head


def assert_matches(got, want, tol):
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w.double(), rtol=tol, atol=tol)


def test_opd_equals_exact_reverse_kl():
    """K = 1, w = 1, β = 1: kl_t = KL(π_θ ‖ π_teacher) (TRL's β = 1 loss), value and gradient."""
    s_h, s_head, t_hs, t_heads, r_h, r_head, a = make(hs=(16, 24))
    w = torch.ones(37, 1, dtype=torch.float64)
    got = value_and_grads(
        lambda h, hd: dense_kl(h, hd, t_hs, t_heads, r_h, r_head, w, chunk_size=8), s_h, s_head, a
    )

    def exact(h, hd):  # Σ_v p_θ (log p_θ − log p_t): no target, no reference
        lsm_s = torch.log_softmax(z64(h, hd), -1)
        lsm_t = torch.log_softmax(z64(t_hs[0], t_heads[0]), -1)
        return (lsm_s.exp() * (lsm_s - lsm_t)).sum(-1)

    want = value_and_grads(exact, *leaves64(s_h, s_head), a)
    assert_matches(got, want, 1e-6)
    assert (got[0] >= 0).all()


def test_zero_weight_teacher_equals_single_teacher_gopd():
    """(λ_e, λ_a) = (1.5, 0) under "active" ⇒ w = (1.5, 0): exactly dense G-OPD(1.5)."""
    s_h, s_head, t_hs, t_heads, r_h, r_head, a = make()
    w2 = teacher_weights(torch.tensor([1.5, 0.0], dtype=torch.float64), "active").expand(37, 2)
    assert w2[0].tolist() == [1.5, 0.0]
    two = value_and_grads(
        lambda h, hd: dense_kl(h, hd, t_hs, t_heads, r_h, r_head, w2, chunk_size=16),
        s_h,
        s_head,
        a,
    )
    w1 = torch.full((37, 1), 1.5, dtype=torch.float64)
    one = value_and_grads(
        lambda h, hd: dense_kl(h, hd, t_hs[:1], t_heads[:1], r_h, r_head, w1, chunk_size=16),
        s_h,
        s_head,
        a,
    )
    assert_matches(two, one, 1e-12)
    # and G-OPD against the float64 formula π* ∝ π_ref^(1−λ) π_t^λ (paper eq. 7)
    want = value_and_grads(
        lambda h, hd: ref_kl64(h, hd, t_hs[:1], t_heads[:1], r_h, r_head, w1),
        *leaves64(s_h, s_head),
        a,
    )
    assert_matches(one, want, 1e-6)


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_negative_lambda_tcopd(beta):
    """TC-OPD (1.5, −0.5) with the paper's 1/K ("all"): w = (0.75, −0.25); value and gradient."""
    s_h, s_head, t_hs, t_heads, r_h, r_head, a = make()
    w = teacher_weights(torch.tensor([1.5, -0.5], dtype=torch.float64), "all").expand(37, 2)
    assert w[0].tolist() == [0.75, -0.25]
    got = value_and_grads(
        lambda h, hd: dense_kl(h, hd, t_hs, t_heads, r_h, r_head, w, beta=beta, chunk_size=10),
        s_h,
        s_head,
        a,
    )
    want = value_and_grads(
        lambda h, hd: ref_kl64(h, hd, t_hs, t_heads, r_h, r_head, w, beta=beta),
        *leaves64(s_h, s_head),
        a,
    )
    assert_matches(got, want, 1e-6)


def test_per_position_weights():
    """w_NK varies by row (the multi-task Λ[domain, teacher] table)."""
    s_h, s_head, t_hs, t_heads, r_h, r_head, a = make()
    g = torch.Generator().manual_seed(5)
    w = torch.randn(37, 2, generator=g, dtype=torch.float64)
    got = value_and_grads(
        lambda h, hd: dense_kl(h, hd, t_hs, t_heads, r_h, r_head, w, beta=0.8, chunk_size=6),
        s_h,
        s_head,
        a,
    )
    want = value_and_grads(
        lambda h, hd: ref_kl64(h, hd, t_hs, t_heads, r_h, r_head, w, beta=0.8),
        *leaves64(s_h, s_head),
        a,
    )
    assert_matches(got, want, 1e-6)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunk_size_invariance(chunk):
    s_h, s_head, t_hs, t_heads, r_h, r_head, a = make(N=300)
    w = torch.tensor([[0.75, -0.25]], dtype=torch.float64).expand(300, 2)
    runs = [
        value_and_grads(
            lambda h, hd, c=c: dense_kl(h, hd, t_hs, t_heads, r_h, r_head, w, chunk_size=c),
            s_h,
            s_head,
            a,
        )
        for c in (chunk, 4096)
    ]
    assert_matches(runs[0], runs[1], 1e-6)


@pytest.mark.parametrize(
    "w_row, beta", [([1.0], 1.0), ([0.7, 0.3], 1.0), ([1.4, 0.6], 2.0), ([2.0, -1.5], 0.5)]
)
def test_without_reference_equals_general_path(w_row, beta):
    """When Σ_k w_k = β the reference cancels: ref=None gives the same loss and gradient."""
    K = len(w_row)
    s_h, s_head, t_hs, t_heads, r_h, r_head, a = make()
    t_hs, t_heads = t_hs[:K], t_heads[:K]
    w = torch.tensor([w_row], dtype=torch.float64).expand(37, K)
    general = value_and_grads(
        lambda h, hd: dense_kl(h, hd, t_hs, t_heads, r_h, r_head, w, beta=beta, chunk_size=8),
        s_h,
        s_head,
        a,
    )
    no_ref = value_and_grads(
        lambda h, hd: dense_kl(h, hd, t_hs, t_heads, None, None, w, beta=beta, chunk_size=8),
        s_h,
        s_head,
        a,
    )
    assert_matches(no_ref, general, 1e-9)
    want = value_and_grads(
        lambda h, hd: ref_kl64(h, hd, t_hs, t_heads, None, None, w, beta=beta),
        *leaves64(s_h, s_head),
        a,
    )
    assert_matches(no_ref, want, 1e-6)


def test_without_reference_requires_weights_summing_to_beta():
    s_h, s_head, t_hs, t_heads, *_ = make()
    w = torch.tensor([[0.75, -0.25]], dtype=torch.float64).expand(37, 2)
    with pytest.raises(ValueError, match="sum to β"):
        dense_kl(s_h, s_head, t_hs, t_heads, None, None, w)


HEADS = dict(
    student=dict(scale=0.5, softcap=3.0),
    teacher=dict(softcap=2.0),
    ref=dict(scale=2.0),
)


def test_temperature_softcap_scale_bias():
    """τ = 0.7 and each head's own scale / soft-cap / bias, against the float64 formula.

    Covers both ways a frozen head enters the target: soft-capped (logits, then weighted) and
    linear (its weight folded into the hidden rows of one accumulating matmul).
    """
    s_h, s_head, t_hs, t_heads, r_h, r_head, a = make(**HEADS)
    g = torch.Generator().manual_seed(3)
    bias = torch.randn(V, generator=g, dtype=torch.float64)
    t_heads = [Head(t_heads[0].weight_VH, bias, 1.0, 2.0), t_heads[1]]  # soft-capped: generic
    r_head = Head(r_head.weight_VH, bias.flip(0), 2.0)  # linear: folded into the matmul
    w = torch.tensor([[1.2, -0.4]], dtype=torch.float64).expand(37, 2)
    got = value_and_grads(
        lambda h, hd: dense_kl(
            h, hd, t_hs, t_heads, r_h, r_head, w, beta=0.9, temperature=0.7, chunk_size=9
        ),
        s_h,
        s_head,
        a,
    )
    want = value_and_grads(
        lambda h, hd: ref_kl64(h, hd, t_hs, t_heads, r_h, r_head, w, beta=0.9, tau=0.7),
        *leaves64(s_h, s_head),
        a,
    )
    assert_matches(got, want, 1e-6)


def test_head_transform_is_logprobs_transform():
    """``Head.logits`` log-softmaxed at targets is exactly ``token_logprobs`` with the same knobs."""
    g = torch.Generator().manual_seed(4)
    h = torch.randn(23, 16, generator=g)
    head = Head(torch.randn(V, 16, generator=g), torch.randn(V, generator=g), 1.7, 2.5)
    y = torch.randint(0, V, (23,), generator=g)
    ours = torch.log_softmax(head.logits(h, 0.7), -1).gather(-1, y[:, None])[:, 0]
    theirs = token_logprobs(
        h, head.weight_VH, y, temperature=0.7, softcap=2.5, bias_V=head.bias_V, scale=1.7
    )
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_no_gradient_into_teachers_or_reference():
    s_h, s_head, t_hs, t_heads, r_h, r_head, a = make()
    frozen = [*t_hs, r_h, *(hd.weight_VH for hd in t_heads), r_head.weight_VH]
    for t in frozen:
        t.requires_grad_(True)
    w = torch.tensor([[0.75, -0.25]], dtype=torch.float64).expand(37, 2)
    (dense_kl(s_h, s_head, t_hs, t_heads, r_h, r_head, w, chunk_size=8) * a).sum().backward()
    assert all(t.grad is None for t in frozen)
    assert s_h.grad is not None and s_head.weight_VH.grad is not None


def test_gradient_wrt_student_logits_closed_form():
    """∂(Σ_t kl_t)/∂z_θ = β·π_θ ⊙ (log π_θ − log p* − KL_t), with the student's logits as leaves."""
    s_h, s_head, t_hs, t_heads, r_h, r_head, _ = make()
    z = z64(s_h, s_head).detach().requires_grad_(True)  # identity head: hidden = logits
    eye = Head(torch.eye(V, dtype=torch.float64))
    w = torch.tensor([[1.5, -0.5]], dtype=torch.float64).expand(37, 2)
    beta = 0.7
    kl = dense_kl(z, eye, t_hs, t_heads, r_h, r_head, w, beta=beta, chunk_size=8)
    (grad,) = torch.autograd.grad(kl.sum(), z)
    lsm_s = torch.log_softmax(z.detach(), -1)
    lsm_t = [torch.log_softmax(z64(h, hd), -1) for h, hd in zip(t_hs, t_heads)]
    lsm_r = torch.log_softmax(z64(r_h, r_head), -1)
    log_star = torch.log_softmax(
        lsm_r + (w[:, :1] * (lsm_t[0] - lsm_r) + w[:, 1:] * (lsm_t[1] - lsm_r)) / beta, -1
    )
    KL = (lsm_s.exp() * (lsm_s - log_star)).sum(-1, keepdim=True)
    want = beta * lsm_s.exp() * (lsm_s - log_star - KL)
    torch.testing.assert_close(grad, want, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(kl.detach(), beta * KL[:, 0], rtol=1e-9, atol=1e-12)


def test_float32_inputs_and_no_grad_path():
    """Float32 models give float32 kl within 2e-5 of float64; under no_grad the same values."""
    s_h, s_head, t_hs, t_heads, r_h, r_head, a = make(dtype=torch.float32)
    w = torch.tensor([[0.75, -0.25]]).expand(37, 2)
    kl = dense_kl(s_h, s_head, t_hs, t_heads, r_h, r_head, w, chunk_size=16)
    assert kl.dtype == torch.float32 and kl.shape == (37,) and kl.requires_grad
    want = ref_kl64(s_h.detach(), s_head, t_hs, t_heads, r_h, r_head, w)
    torch.testing.assert_close(kl.detach().double(), want, rtol=2e-5, atol=2e-5)
    with torch.no_grad():
        kl_ng = dense_kl(s_h, s_head, t_hs, t_heads, r_h, r_head, w, chunk_size=16)
    assert not kl_ng.requires_grad
    torch.testing.assert_close(kl_ng, kl.detach(), rtol=0, atol=0)


def test_empty_and_shape_errors():
    s_h, s_head, t_hs, t_heads, r_h, r_head, _ = make()
    w = torch.ones(37, 2, dtype=torch.float64) * 0.5
    empty = dense_kl(s_h[:0], s_head, [h[:0] for h in t_hs], t_heads, None, None, w[:0])
    assert empty.shape == (0,)
    bad = [
        dict(w=w[:, :1]),  # w_NK not (N, K)
        dict(t_hs=[t_hs[0], t_hs[1][:5]]),  # a teacher with other positions
        dict(t_hs=[t_hs[1], t_hs[0]]),  # hidden sizes swapped against the heads
        dict(r_head=None),  # ref hidden without its head
        dict(t_heads=[t_heads[0], Head(torch.randn(V + 1, 8, dtype=torch.float64))]),
        dict(t_hs=[], t_heads=[], w=w[:, :0]),
        dict(beta=0.0),
    ]
    for kw in bad:
        args = dict(t_hs=t_hs, t_heads=t_heads, r_h=r_h, r_head=r_head, w=w, beta=1.0)
        args.update(kw)
        with pytest.raises(ValueError):
            dense_kl(
                s_h,
                s_head,
                args["t_hs"],
                args["t_heads"],
                args["r_h"],
                args["r_head"],
                args["w"],
                beta=args["beta"],
            )


def test_padded_vocabulary_rows_take_no_part():
    """A head with more rows than the tokenizer has tokens (Qwen3: 151,936 rows, 151,669
    tokens): with vocab_size, π_θ and p* live on the real tokens only. λ = (1.5, −0.5) gives the
    anti-expert a negative weight, so without the mask p* would put mass on the padding rows."""
    real = 90  # of V = 101 rows
    s_h, s_head, t_hs, t_heads, r_h, r_head, a = make()
    w = teacher_weights(torch.tensor([1.5, -0.5], dtype=torch.float64), "all").expand(37, 2)

    def cut(head):  # the same head over the first `real` rows: the float64 reference's inputs
        return Head(head.weight_VH[:real], head.bias_V, head.scale, head.softcap)

    got = value_and_grads(
        lambda h, hd: dense_kl(
            h, hd, t_hs, t_heads, r_h, r_head, w, chunk_size=10, vocab_size=real
        ),
        s_h,
        s_head,
        a,
    )

    def reference(h, hd):
        t = [cut(x) for x in t_heads]
        return ref_kl64(h, cut(hd), t_hs, t, r_h, cut(r_head), w)

    want = value_and_grads(reference, *leaves64(s_h, s_head), a)
    assert_matches(got, want, 1e-6)  # (the reference's gradient is zero past `real` rows)
    assert got[2][real:].abs().max() == 0.0  # no gradient into the padding rows of the head
    # the target itself: no mass on the padding rows, and normalised over the real ones
    from tcopd.core.dense import target_logprobs

    full = target_logprobs([h[:5] for h in t_hs], t_heads, r_h[:5], r_head, w[:5], 1.0, 1.0)
    masked = target_logprobs(
        [h[:5] for h in t_hs], t_heads, r_h[:5], r_head, w[:5], 1.0, 1.0, vocab_size=real
    )
    assert masked.shape == (5, real)
    torch.testing.assert_close(masked.exp().sum(-1), torch.ones(5, dtype=masked.dtype))
    assert full.exp()[:, real:].sum(-1).min() > 1e-3  # unmasked: the padding rows get mass
    with pytest.raises(ValueError, match="vocab_size 102 exceeds"):
        dense_kl(s_h, s_head, t_hs, t_heads, r_h, r_head, w, vocab_size=V + 1)

"""core.dense_support: the dense loss with served (top-k) teachers, against the exact dense loss.

The served teacher's rows are the log-softmax of its own logits, cut to a support; the exact
reference is core.dense.dense_kl (itself checked against float64 full logits in test_dense.py)
with that teacher local. An identity head makes the student's hidden states its logits, so the
gradient with respect to the hidden states is the gradient with respect to the logits."""

from __future__ import annotations

import pytest
import torch

from tcopd.core.dense import Head, dense_kl
from tcopd.core.dense_support import ServedRows, support_dense_loss

V, N, BETA = 40, 6, 1.0


def _world(seed=0):
    g = torch.Generator().manual_seed(seed)
    eye = Head(torch.eye(V, dtype=torch.float64))
    z = lambda scale: torch.randn(N, V, generator=g, dtype=torch.float64) * scale  # noqa: E731
    return eye, z(1.5), z(2.0), z(2.0), z(1.0)  # head, student, expert, anti-expert, reference


def _coefs(lams=(1.5, -0.5)):
    w = torch.tensor([lam / len(lams) for lam in lams], dtype=torch.float64)  # "all": 1/K
    c_ref = 1.0 - w.sum() / BETA
    return w / BETA, c_ref


def _exact_grad(z_s, z_e, z_a, z_r, eye):
    w, _ = _coefs()
    h = z_s.clone().requires_grad_(True)
    kl = dense_kl(h, eye, [z_e, z_a], [eye, eye], z_r, eye, (w * BETA).expand(N, 2), BETA)
    (g,) = torch.autograd.grad(kl.sum(), h)
    return g


def _served_rows(z_a, support_NS, targets):
    lp = torch.log_softmax(z_a, -1)
    ids = support_NS.clone()
    vals = lp.gather(1, ids.clamp(min=0)).masked_fill(ids < 0, 0.0)
    return ServedRows(ids, vals[None], lp.gather(1, targets[:, None]).T)


def _loss(z_s, z_e, z_r, z_a, eye, support_NS, targets, old_logp, chunk=7):
    """The estimator with the expert and π_ref local, the anti-expert served on the support."""
    w, c_ref = _coefs()
    local_coef = torch.stack([torch.full((len(targets),), c_ref), w[0].expand(len(targets))], -1)
    served = _served_rows(z_a, support_NS, targets)
    return support_dense_loss(
        z_s, eye, [z_r, z_e], [eye, eye], local_coef, served, w[1].expand(len(targets), 1),
        targets, old_logp, beta=BETA, chunk_size=chunk,
    )  # fmt: skip


def test_full_support_is_the_dense_gradient():
    eye, z_s, z_e, z_a, z_r = _world()
    all_ids = torch.arange(V).expand(N, V)
    targets = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(1))
    h = z_s.clone().requires_grad_(True)
    old = torch.log_softmax(z_s, -1).gather(1, targets[:, None]).squeeze(1)
    loss, stats = _loss(h, z_e, z_r, z_a, eye, all_ids, targets, old)
    (got,) = torch.autograd.grad(loss.sum(), h)
    torch.testing.assert_close(got, _exact_grad(z_s, z_e, z_a, z_r, eye), rtol=0, atol=1e-12)
    assert stats["outside"].sum() == 0 and torch.allclose(
        stats["student_mass"], torch.ones(N, dtype=torch.float64)
    )
    assert torch.allclose(stats["target_mass"], torch.ones(N, dtype=torch.float64))
    assert stats["support"].tolist() == [V] * N


def _per_sample_grads(z_s, z_e, z_a, z_r, eye, support_NS, M, seed):
    """Gradients (M, N, V) of the estimator, one per sampled token y ∼ π_θ at each position."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(z_s, -1)
    targets = torch.multinomial(probs, M, replacement=True, generator=g).T.reshape(-1)  # M·N
    rep = lambda x: x.repeat(M, 1)  # noqa: E731  (row m·N + n is position n, sample m)
    h = rep(z_s).requires_grad_(True)
    old = torch.log_softmax(rep(z_s), -1).gather(1, targets[:, None]).squeeze(1)
    loss, _ = _loss(h, rep(z_e), rep(z_r), rep(z_a), eye, rep(support_NS), targets, old, 8192)
    (grad,) = torch.autograd.grad(loss.sum(), h)
    return grad.reshape(M, N, V)


def _every_token_grads(z_s, z_e, z_a, z_r, eye, support_NS):
    """Gradients (V, N, V) of the estimator for every possible sampled token y at each position."""
    targets = torch.arange(V).repeat_interleave(N)  # row y·N + n: position n, token y
    rep = lambda x: x.repeat(V, 1)  # noqa: E731
    h = rep(z_s).requires_grad_(True)
    old = torch.log_softmax(rep(z_s), -1).gather(1, targets[:, None]).squeeze(1)
    loss, _ = _loss(h, rep(z_e), rep(z_r), rep(z_a), eye, rep(support_NS), targets, old)
    (grad,) = torch.autograd.grad(loss.sum(), h)
    return grad.reshape(V, N, V)


@pytest.mark.parametrize("k", [1, 4, 16])
def test_unbiased_at_every_k_and_renormalised_top_k_is_not(k):
    """The support is the served teacher's top k, chosen from the prefix (its own row), never
    from the sampled token.

    Exactly: the expectation over the sampled token (Σ_y π_θ(y)·grad(y), every y enumerated)
    equals the exact dense gradient to rounding. Sampled, as a run sees it: over M = 4000
    tokens per position, the mean of the gradient projected on 4 fixed directions per position
    (3 random, the exact gradient's) lies within 5 standard errors of the exact projection (24
    bounded scalars; a false alarm has probability ~1e-5); a renormalised top-k (what TRL and
    NeMo-RL do with a top-k) is more than 20 standard errors off (so the check can fail)."""
    eye, z_s, z_e, z_a, z_r = _world()
    support = z_a.topk(k, dim=-1).indices
    exact = _exact_grad(z_s, z_e, z_a, z_r, eye)
    every = _every_token_grads(z_s, z_e, z_a, z_r, eye, support)
    expectation = (torch.softmax(z_s, -1).T[:, :, None] * every).sum(0)
    torch.testing.assert_close(expectation, exact, rtol=0, atol=1e-12)

    M = 4000
    grads = _per_sample_grads(z_s, z_e, z_a, z_r, eye, support, M, seed=k)  # M, N, V
    g = torch.Generator().manual_seed(100 + k)
    u = torch.randn(N, 3, V, generator=g, dtype=torch.float64)
    u = torch.cat([u, exact[:, None, :]], 1)
    u = u / u.norm(dim=-1, keepdim=True)  # N, 4, V
    proj = torch.einsum("mnv,ndv->mnd", grads, u)  # M, N, 4
    mean, se = proj.mean(0), proj.std(0) / M**0.5
    want = torch.einsum("nv,ndv->nd", exact, u)
    z_score = ((mean - want).abs() / se).max()
    assert z_score < 5, f"max |mean − exact| / SE = {z_score:.1f}"
    renormalised = torch.einsum("nv,ndv->nd", _renormalised_grad(z_s, z_e, z_a, z_r, support), u)
    assert ((renormalised - want).abs() / se).max() > 20


def _renormalised_grad(z_s, z_e, z_a, z_r, support):
    w, c_ref = _coefs()
    h = z_s.clone().requires_grad_(True)
    lsm = lambda z: torch.log_softmax(z.gather(1, support), -1)  # noqa: E731
    target = torch.log_softmax(c_ref * lsm(z_r) + w[0] * lsm(z_e) + w[1] * lsm(z_a), -1)
    logp = lsm(h)
    kl = BETA * (logp.exp() * (logp - target)).sum()
    (g,) = torch.autograd.grad(kl, h)
    return g


def test_empty_support_is_the_sampled_estimator():
    """S = ∅: the gradient at y is −A·∇log π_θ(y) with A = β (s(y) − log π_θ(y)), the sampled
    per-token advantage with π_old = π_θ (docs/algorithm.md), here at exactly one sample."""
    eye, z_s, z_e, z_a, z_r = _world()
    targets = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(3))
    h = z_s.clone().requires_grad_(True)
    logp = torch.log_softmax(z_s, -1)
    old = logp.gather(1, targets[:, None]).squeeze(1)
    empty = torch.full((N, 1), -1)
    loss, stats = _loss(h, z_e, z_r, z_a, eye, empty, targets, old)
    (got,) = torch.autograd.grad(loss.sum(), h)
    w, c_ref = _coefs()
    lsm = lambda z: torch.log_softmax(z, -1).gather(1, targets[:, None]).squeeze(1)  # noqa: E731
    s_y = c_ref * lsm(z_r) + w[0] * lsm(z_e) + w[1] * lsm(z_a)
    advantage = BETA * (s_y - old)
    onehot = torch.nn.functional.one_hot(targets, V).double()
    want = -advantage[:, None] * (onehot - logp.exp())  # −A ∇_z log π(y)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert stats["outside"].tolist() == [1.0] * N and stats["support"].tolist() == [0] * N

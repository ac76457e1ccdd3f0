"""core.logprobs and core.batching against naive float64 references and hand-worked plans."""

from __future__ import annotations

import pytest
import torch

from tcopd.core.batching import padded_tokens, padding_fraction, plan_packed, plan_padded
from tcopd.core.logprobs import reference_logprobs, token_logprobs


def naive64(hidden, weight, targets, temperature=1.0, softcap=None, bias=None, scale=1.0):
    z = hidden.double() @ weight.double().T
    if bias is not None:
        z = z + bias.double()
    z = z * scale
    if softcap is not None:
        z = torch.tanh(z / softcap) * softcap
    z = z / temperature
    lsm = torch.log_softmax(z, -1)
    return lsm.gather(-1, targets[:, None])[:, 0], -(lsm.exp() * lsm).sum(-1)


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(0)
    N, H, V = 37, 16, 101
    hidden = torch.randn(N, H, generator=g)
    weight = torch.randn(V, H, generator=g) * 0.7
    targets = torch.randint(0, V, (N,), generator=g)
    bias = torch.randn(V, generator=g)
    return hidden, weight, targets, bias


@pytest.mark.parametrize("chunk", [1, 5, 16, 37, 512])
def test_matches_float64_across_chunks(problem, chunk):
    hidden, weight, targets, _ = problem
    ref, _ = naive64(hidden, weight, targets)
    got = token_logprobs(hidden, weight, targets, chunk_size=chunk)
    assert got.dtype == torch.float32 and got.shape == (37,)
    assert (got.double() - ref).abs().max() <= 1e-5


@pytest.mark.parametrize(
    "kw",
    [
        dict(temperature=0.7),
        dict(softcap=3.0),
        dict(scale=0.5),
        dict(temperature=1.3, softcap=2.0, scale=2.0),
    ],
)
def test_transforms_and_bias(problem, kw):
    hidden, weight, targets, bias = problem
    ref, ent = naive64(hidden, weight, targets, bias=bias, **kw)
    got, got_ent = token_logprobs(
        hidden, weight, targets, chunk_size=8, bias_V=bias, return_entropy=True, **kw
    )
    assert (got.double() - ref).abs().max() <= 1e-5
    assert (got_ent.double() - ent).abs().max() <= 1e-5


def test_temperature_changes_result(problem):
    hidden, weight, targets, _ = problem
    a = token_logprobs(hidden, weight, targets)
    b = token_logprobs(hidden, weight, targets, temperature=2.0)
    assert (a - b).abs().max() > 1e-2


@pytest.mark.parametrize("checkpoint", [True, False])
def test_gradients_match_naive(problem, checkpoint):
    hidden, weight, targets, bias = problem
    coef = torch.randn(hidden.shape[0], generator=torch.Generator().manual_seed(1))
    h1, w1, b1 = (t.clone().double().requires_grad_() for t in (hidden, weight, bias))
    ref, _ = naive64(h1, w1, targets, bias=b1, softcap=4.0)
    (ref * coef.double()).sum().backward()
    h2, w2, b2 = (t.clone().requires_grad_() for t in (hidden, weight, bias))
    got = token_logprobs(
        h2, w2, targets, chunk_size=6, bias_V=b2, softcap=4.0, checkpoint=checkpoint
    )
    assert got.requires_grad
    (got * coef).sum().backward()
    for a, b in ((h1, h2), (w1, w2), (b1, b2)):
        torch.testing.assert_close(b.grad.double(), a.grad, atol=1e-5, rtol=1e-4)


def test_bf16_projection_float32_lse(problem):
    hidden, weight, targets, _ = problem
    got = token_logprobs(hidden.bfloat16(), weight.bfloat16(), targets, chunk_size=7)
    assert got.dtype == torch.float32
    # same numbers as the plain path on bf16 logits (projection in bf16, softmax in fp32)
    plain = reference_logprobs(hidden.bfloat16() @ weight.bfloat16().T, targets)
    torch.testing.assert_close(got, plain, atol=1e-5, rtol=0)


def test_empty_and_bad_args(problem):
    hidden, weight, targets, _ = problem
    assert token_logprobs(hidden[:0], weight, targets[:0]).shape == (0,)
    with pytest.raises(ValueError):
        token_logprobs(hidden, weight, targets[:3])
    with pytest.raises(ValueError):
        token_logprobs(hidden, weight, targets, temperature=0.0)
    with pytest.raises(ValueError):
        token_logprobs(hidden, weight, targets, chunk_size=0)


# ------------------------------------------------------------------------------- batching
def test_plan_padded_hand_worked():
    lengths = [5, 2, 9, 3, 3]
    # longest first: 9 | 5 (2·5=10 ≤ 12? yes with 3? 3·5=15 > 12) -> [2], [0, 3], [4, 1]
    plan = plan_padded(lengths, token_budget=12)
    assert plan == [[2], [0, 3], [4, 1]]
    assert padded_tokens(lengths, plan) == 9 + 10 + 6
    assert padding_fraction(lengths, plan) == pytest.approx(1 - 22 / 25)


@pytest.mark.parametrize("budget", [1, 7, 20, 1000])
def test_plans_cover_each_index_once_within_budget(budget):
    g = torch.Generator().manual_seed(budget)
    lengths = torch.randint(1, 30, (41,), generator=g).tolist()
    for plan, packed in (
        (plan_padded(lengths, budget), False),
        (plan_packed(lengths, budget), True),
    ):
        flat = sorted(i for b in plan for i in b)
        assert flat == list(range(len(lengths)))
        for b in plan:
            cost = padded_tokens(lengths, [b], packed)
            assert cost <= budget or len(b) == 1
    assert padding_fraction(lengths, plan_packed(lengths, budget), packed=True) == 0.0


def test_plan_packed_first_fit():
    assert plan_packed([4, 3, 2, 1], token_budget=5) == [[0, 3], [1, 2]]
    assert plan_padded([4, 4, 4], token_budget=100, max_batch=2) == [[0, 1], [2]]


def test_callable_projection_equals_weight_path():
    """The module-call path (used under ZeRO-3) gives the same log-probs and gradients."""
    g = torch.Generator().manual_seed(11)
    h = torch.randn(37, 16, generator=g, dtype=torch.float64, requires_grad=True)
    head = torch.nn.Linear(16, 50, bias=False).double()
    y = torch.randint(0, 50, (37,), generator=g)
    a = token_logprobs(h, head.weight, y, chunk_size=8)
    (ga,) = torch.autograd.grad(a.sum(), h)
    b = token_logprobs(h, head, y, chunk_size=8)
    (gb,) = torch.autograd.grad(b.sum(), h)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    torch.testing.assert_close(ga, gb, rtol=0, atol=1e-12)

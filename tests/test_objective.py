"""The TC-OPD objective against hand-worked examples and naive Python loops (SPEC §1)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from tcopd.core.objective import (
    advantage,
    aggregate,
    clipped_policy_loss,
    contrastive_reward,
    outcome_bonus,
    policy_loss,
    teacher_weights,
    truncated_is_weight,
)


def _rand(*shape, gen):
    return -torch.rand(*shape, generator=gen, dtype=torch.float64) * 5


def _mask(B, T, gen):
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    return (torch.arange(T)[None, :] < lengths[:, None]).to(torch.float64)


def test_opd_special_case_is_teacher_minus_old():
    g = torch.Generator().manual_seed(0)
    B, T = 3, 7
    lp_t, lp_ref, lp_old = _rand(1, B, T, gen=g), _rand(B, T, gen=g), _rand(B, T, gen=g)
    mask = _mask(B, T, g)
    w = teacher_weights(torch.tensor([1.0], dtype=torch.float64))
    adv = advantage(contrastive_reward(lp_t, lp_ref, w), lp_old, lp_ref, mask, beta=1.0)
    torch.testing.assert_close(adv, (lp_t[0] - lp_old) * mask, rtol=0, atol=1e-12)


def test_gopd_special_case():
    g = torch.Generator().manual_seed(1)
    B, T, lam = 2, 5, 1.5
    lp_t, lp_ref, lp_old = _rand(1, B, T, gen=g), _rand(B, T, gen=g), _rand(B, T, gen=g)
    mask = torch.ones(B, T, dtype=torch.float64)
    w = teacher_weights(torch.tensor([lam], dtype=torch.float64))
    adv = advantage(contrastive_reward(lp_t, lp_ref, w), lp_old, lp_ref, mask)
    expected = lam * (lp_t[0] - lp_ref) - (lp_old - lp_ref)
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-12)


def test_zero_lambda_teacher_under_active_equals_gopd_token_for_token():
    g = torch.Generator().manual_seed(2)
    B, T = 4, 6
    lp_e, lp_a = _rand(1, B, T, gen=g), _rand(1, B, T, gen=g)
    lp_ref, lp_old = _rand(B, T, gen=g), _rand(B, T, gen=g)
    mask = _mask(B, T, g)
    two = teacher_weights(torch.tensor([1.5, 0.0], dtype=torch.float64), "active")
    one = teacher_weights(torch.tensor([1.5], dtype=torch.float64), "active")
    adv2 = advantage(contrastive_reward(torch.cat([lp_e, lp_a]), lp_ref, two), lp_old, lp_ref, mask)
    adv1 = advantage(contrastive_reward(lp_e, lp_ref, one), lp_old, lp_ref, mask)
    assert torch.equal(adv2, adv1)
    # the literal 1/K ('all') halves the expert's weight instead: the paper's Table 1 equivalence fails
    half = teacher_weights(torch.tensor([1.5, 0.0], dtype=torch.float64), "all")
    assert half.tolist() == [0.75, 0.0]


def test_tcopd_hand_computed_example():
    # One response, two tokens. λ = (1.5, -0.5), K_eff = 2, β = 1.
    lp_e = torch.tensor([[[-1.0, -2.0]]], dtype=torch.float64)  # expert
    lp_a = torch.tensor([[[-0.5, -4.0]]], dtype=torch.float64)  # anti-expert
    lp_ref = torch.tensor([[-2.0, -3.0]], dtype=torch.float64)
    lp_old = torch.tensor([[-1.5, -2.5]], dtype=torch.float64)
    # token 1: d_e = 1.0, d_a = 1.5 → r = (1.5·1.0 − 0.5·1.5)/2 = 0.375; KL term 0.5 → A = −0.125
    # token 2: d_e = 1.0, d_a = −1.0 → r = (1.5 + 0.5)/2 = 1.0; KL term 0.5 → A = 0.5
    w = teacher_weights(torch.tensor([1.5, -0.5], dtype=torch.float64))
    r = contrastive_reward(torch.cat([lp_e, lp_a]), lp_ref, w)
    assert r.tolist() == [[0.375, 1.0]]
    adv = advantage(r, lp_old, lp_ref, torch.ones(1, 2, dtype=torch.float64))
    assert adv.tolist() == [[-0.125, 0.5]]
    # 'none' is a plain sum; 'all' with a third λ=0 teacher divides by 3
    assert teacher_weights(torch.tensor([1.5, -0.5]), "none").tolist() == [1.5, -0.5]
    torch.testing.assert_close(
        teacher_weights(torch.tensor([1.5, -0.5, 0.0]), "all"), torch.tensor([0.5, -0.5 / 3, 0.0])
    )


def test_per_domain_weights_rows():
    lam_BK = torch.tensor([[1.5, -0.5], [-0.5, 1.5], [1.0, 0.0]])
    w = teacher_weights(lam_BK, "active")
    torch.testing.assert_close(w, torch.tensor([[0.75, -0.25], [-0.25, 0.75], [1.0, 0.0]]))


def _naive_loss(new, old, adv, mask, eps, c, isw, mode):
    """Plain Python loop over tokens, float64."""
    B, T = len(new), len(new[0])
    per_seq, total, ntok = [], 0.0, 0
    for b in range(B):
        s, n = 0.0, 0
        for t in range(T):
            if mask[b][t] == 0:
                continue
            ratio = math.exp(new[b][t] - old[b][t])
            a = adv[b][t]
            l1 = -a * ratio
            l2 = -a * min(max(ratio, 1 - eps), 1 + eps)
            lt = max(l1, l2)
            if a < 0:
                lt = min(lt, -a * c)
            lt *= isw[b][t]
            s += lt
            n += 1
        total += s
        ntok += n
        per_seq.append(s / n if mode == "seq-mean-token-mean" else s)
    if mode == "token-mean":
        return total / ntok
    return sum(per_seq) / B


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_policy_loss_matches_python_loop(mode):
    g = torch.Generator().manual_seed(3)
    B, T = 5, 9
    old = _rand(B, T, gen=g)
    new = old + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.5  # many clipped
    adv = torch.randn(B, T, generator=g, dtype=torch.float64) * 2
    mask = _mask(B, T, g)
    rollout = old + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3
    isw = truncated_is_weight(old, rollout, cap=1.5)
    loss, _ = policy_loss(new, old, adv, mask, 0.2, None, 3.0, isw, mode)
    ref = _naive_loss(
        new.tolist(), old.tolist(), adv.tolist(), mask.tolist(), 0.2, 3.0, isw.tolist(), mode
    )
    assert loss.item() == pytest.approx(ref, rel=1e-12, abs=1e-12)


def test_gradient_is_minus_adv_ratio_over_n_unclipped_and_zero_clipped():
    g = torch.Generator().manual_seed(4)
    B, T = 4, 8
    old = _rand(B, T, gen=g)
    new = (old + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.4).requires_grad_(True)
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = _mask(B, T, g)
    loss, stats = policy_loss(new, old, adv, mask, clip_eps=0.2, dual_clip=3.0)
    loss.backward()
    n = mask.sum().item()
    checked_unclipped = checked_clipped = 0
    for b in range(B):
        for t in range(T):
            if mask[b, t] == 0:
                assert new.grad[b, t].item() == 0.0
                continue
            ratio = math.exp(new[b, t].item() - old[b, t].item())
            a = adv[b, t].item()
            clipped = (a > 0 and ratio > 1.2) or (a < 0 and ratio < 0.8) or (a < 0 and ratio > 3.0)
            if clipped:
                assert new.grad[b, t].item() == 0.0
                checked_clipped += 1
            else:
                assert new.grad[b, t].item() == pytest.approx(-a * ratio / n, rel=1e-9)
                checked_unclipped += 1
    assert checked_clipped > 0 and checked_unclipped > 0
    assert 0 < stats["clip_fraction"].item() < 1


def test_dual_clip_caps_negative_advantage_loss():
    old = torch.zeros(1, 1, dtype=torch.float64)
    new = torch.full((1, 1), math.log(10.0), dtype=torch.float64)  # ratio 10
    adv = torch.full((1, 1), -1.0, dtype=torch.float64)
    loss_BT, clipped = clipped_policy_loss(new, old, adv, 0.2, None, 3.0)
    assert loss_BT.item() == pytest.approx(3.0)  # −c·A, not −ρ·A = 10
    assert clipped.item() == 1.0
    loss_BT, _ = clipped_policy_loss(new, old, adv, 0.2, None, None)
    assert loss_BT.item() == pytest.approx(10.0)


def test_aggregate_normaliser_override_makes_microbatching_invariant():
    g = torch.Generator().manual_seed(5)
    loss = torch.randn(6, 4, generator=g, dtype=torch.float64)
    mask = _mask(6, 4, g)
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum"):
        whole = aggregate(loss, mask, mode)
        parts = sum(
            aggregate(loss[i : i + 2], mask[i : i + 2], mode, num_tokens=mask.sum(), num_seqs=6.0)
            for i in range(0, 6, 2)
        )
        torch.testing.assert_close(parts, whole, rtol=1e-12, atol=1e-12)


def test_outcome_bonus_against_loop():
    rng = random.Random(0)
    correct = [rng.random() < 0.5 for _ in range(12)]
    groups = [i // 4 for i in range(12)]
    bonus = outcome_bonus(torch.tensor(correct, dtype=torch.float32), torch.tensor(groups), 0.5)
    for i in range(12):
        same = [float(correct[j]) for j in range(12) if groups[j] == groups[i]]
        assert bonus[i].item() == pytest.approx(
            0.5 * (float(correct[i]) - sum(same) / len(same)), abs=1e-6
        )


def test_truncated_is_weight_caps_at_five():
    old = torch.tensor([[0.0, 0.0, -1.0]])
    rollout = torch.tensor([[-3.0, 0.0, 0.0]])
    w = truncated_is_weight(old, rollout)
    torch.testing.assert_close(w, torch.tensor([[5.0, 1.0, math.exp(-1.0)]]))


def test_vectorised_advantage_matches_loop_with_masks_and_outcome():
    g = torch.Generator().manual_seed(6)
    K, B, T = 3, 4, 5
    lam = torch.tensor([1.5, -0.5, 0.7], dtype=torch.float64)
    lp_k, lp_ref, lp_old = _rand(K, B, T, gen=g), _rand(B, T, gen=g), _rand(B, T, gen=g)
    mask = _mask(B, T, g)
    out_B = torch.tensor([0.25, -0.25, 0.0, 0.5], dtype=torch.float64)
    beta = 0.7
    adv = advantage(
        contrastive_reward(lp_k, lp_ref, teacher_weights(lam)), lp_old, lp_ref, mask, beta, out_B
    )
    for b in range(B):
        for t in range(T):
            if mask[b, t] == 0:
                assert adv[b, t].item() == 0.0
                continue
            r = (
                sum(lam[k].item() * (lp_k[k, b, t].item() - lp_ref[b, t].item()) for k in range(K))
                / 3
            )
            a = r - beta * (lp_old[b, t].item() - lp_ref[b, t].item()) + out_B[b].item()
            assert adv[b, t].item() == pytest.approx(a, rel=1e-12, abs=1e-12)

"""One home for reward and advantage; the NaN-proof ratio; the update's invariances.

- train's advantage phase and ``tcopd score`` produce the same per-token reward and advantage,
  for every normalization, with and without a λ = 0 teacher, and with a per-domain table, and
  both equal a float64 loop over SPEC §1's formulas (an independent path);
- one extreme token (old −95, new −2) gives a finite gradient and leaves the other tokens' alone;
- a non-finite gradient norm is an error naming the step;
- the weights after ``ppo_update`` do not depend on ``train_token_budget`` (ZeRO-2, one process).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from tcopd.core.objective import PPOLoss, clipped_policy_loss
from tcopd.core.teachers import TeacherSpec, active_teachers, validate_lambda_table
from tcopd.errors import TrainingError

RESPONSES = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
DOMAINS = ["math", "code", None]


def _logprobs(seed: int) -> dict[str, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    names = ("student", "reference", "expert", "anti_expert")
    return {n: [-torch.rand(len(r), generator=g) * 3 for r in RESPONSES] for n in names}


def _naive(lp, specs, table, normalization, beta=1.0):
    """SPEC §1 in float64 Python loops: K_eff per domain row, r = Σ w_k d_k, A = r − β(old − ref)."""
    out_r, out_a = [], []
    for b, r in enumerate(RESPONSES):
        row = table.get(DOMAINS[b]) if DOMAINS[b] is not None else None
        lam = {s.name: (row[s.name] if row is not None else s.lam) for s in specs}
        k_eff = {
            "active": max(sum(1 for v in lam.values() if v != 0), 1),
            "all": len(specs),
            "none": 1,
        }[normalization]
        rr, aa = [], []
        for t in range(len(r)):
            ref = float(lp["reference"][b][t])
            # a teacher with λ = 0 in every row was never scored: it adds 0 here too
            reward = sum(lam[s.name] / k_eff * (float(lp[s.name][b][t]) - ref) for s in specs)
            rr.append(reward)
            aa.append(reward - beta * (float(lp["student"][b][t]) - ref))
        out_r.append(rr)
        out_a.append(aa)
    return out_r, out_a


CASES = [
    ("no λ=0", [TeacherSpec("expert", "e", 1.5), TeacherSpec("anti_expert", "a", -0.5)], {}),
    ("λ=0 teacher", [TeacherSpec("expert", "e", 1.5), TeacherSpec("anti_expert", "a", 0.0)], {}),
    (
        "per-domain table",
        [TeacherSpec("expert", "e", 1.0), TeacherSpec("anti_expert", "a", 0.0)],
        {"math": {"expert": 1.5, "anti_expert": -0.5}, "code": {"expert": -0.5}},
    ),
]


@pytest.mark.parametrize("normalization", ["active", "all", "none"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_train_and_score_compute_the_same_signal(case, normalization):
    from tcopd.pipelines import score as score_pipeline
    from tcopd.pipelines import score_rows
    from tcopd.pipelines.train.advantages import advantages
    from tcopd.pipelines.train.grade import Grades
    from tcopd.pipelines.train.rollout import Rollouts
    from tcopd.pipelines.train.score import Scores
    from tcopd.runtime.generation.rollout import Completion

    _, specs, table = case
    table = validate_lambda_table(table, specs)
    active = active_teachers(specs, table)
    lp = _logprobs(0)
    # train: its advantage phase, on a trainer holding just what that phase reads
    tr = SimpleNamespace(
        cfg=SimpleNamespace(
            teacher_normalization=normalization,
            beta=1.0,
            outcome_weight=0.0,
            truncated_is=False,
            is_cap=5.0,
        ),
        specs=specs,
        table=table,
    )
    comps = [Completion(b, 0, [1, 2], r, "", "stop", None) for b, r in enumerate(RESPONSES)]
    batch = Rollouts(comps, ["0"] * 3, DOMAINS, [[]] * 3)
    scores = Scores(
        lp["student"], [], {"reference": lp["reference"], **{s.name: lp[s.name] for s in active}}
    )
    signal, _ = advantages(tr, batch, scores, Grades(torch.zeros(3), 0))
    # score: its reward function, on the same log-probs
    rows = [
        score_rows.Row(b, {"domain": DOMAINS[b]} if DOMAINS[b] else {}, [1, 2], r)
        for b, r in enumerate(RESPONSES)
    ]
    cfg = score_pipeline.ScoreConfig(teacher_normalization=normalization)
    out, _ = score_pipeline._rewards(cfg, specs, active, table, rows, lp)
    want_r, want_a = _naive(lp, specs, table, normalization)
    for b, r in enumerate(RESPONSES):
        n = len(r)
        torch.testing.assert_close(signal.reward_BT[b, :n], torch.tensor(out[b][1]["reward"]))
        torch.testing.assert_close(signal.adv_BT[b, :n], torch.tensor(out[b][1]["advantage"]))
        torch.testing.assert_close(
            signal.adv_BT[b, :n].double(),
            torch.tensor(want_a[b], dtype=torch.float64),
            atol=1e-6,
            rtol=0,
        )
        torch.testing.assert_close(
            signal.reward_BT[b, :n].double(),
            torch.tensor(want_r[b], dtype=torch.float64),
            atol=1e-6,
            rtol=0,
        )


def test_all_normalization_counts_a_zero_lambda_teacher():
    """(1.5, 0) under 'all' is the expert at weight 0.75 — half of 'active' — by hand."""
    from tcopd.core.signal import training_signal

    specs = [TeacherSpec("expert", "e", 1.5), TeacherSpec("anti_expert", "a", 0.0)]
    old = [torch.tensor([-1.0, -2.0])]
    ref = [torch.tensor([-1.5, -1.0])]
    expert = {"expert": [torch.tensor([-0.5, -0.5])]}
    a = training_signal(old, ref, expert, specs, domains=[None], normalization="active")
    b = training_signal(old, ref, expert, specs, domains=[None], normalization="all")
    # d = (1.0, 0.5): active → 1.5·d = (1.5, 0.75); all → 0.75·d = (0.75, 0.375)
    torch.testing.assert_close(a.reward_BT, torch.tensor([[1.5, 0.75]]))
    torch.testing.assert_close(b.reward_BT, torch.tensor([[0.75, 0.375]]))


def test_extreme_log_ratio_gives_a_finite_gradient():
    """old = −95, new = −2 on one token: exp(93) overflows float32; the clamp keeps it finite."""
    old = torch.tensor([[-95.0, -1.0, -2.0]])
    adv = torch.tensor([[0.5, -0.3, 0.8]])
    new = torch.tensor([[-2.0, -1.1, -1.9]], requires_grad=True)
    loss, _ = clipped_policy_loss(new, old, adv, 0.2, None, 3.0)
    loss.sum().backward()
    assert torch.isfinite(new.grad).all()
    # without the clamp the gradient is NaN on that token (the bug this guards against)
    raw = new.detach().clone().requires_grad_(True)
    ratio = torch.exp(raw - old)
    l_raw = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2))
    l_raw.sum().backward()
    assert not torch.isfinite(raw.grad[0, 0])
    # the other tokens' gradients are the unclamped ones, computed by hand:
    # token 1: A<0, ρ=exp(−0.1)=0.905 ∈ [0.8, 1.2] → ∂(−Aρ)/∂lp = −A·ρ
    # token 2: A>0, ρ=exp(0.1)=1.105 ∈ [0.8, 1.2] → −A·ρ
    want = torch.tensor([0.3 * math.exp(-0.1), -0.8 * math.exp(0.1)])
    torch.testing.assert_close(new.grad[0, 1:], want)
    torch.testing.assert_close(new.grad[0, 1:], raw.grad[0, 1:])


class _NanEngine:
    """Just enough of Learner for ppo_update, with a gradient norm of NaN."""

    def __init__(self, model):
        self.module = model

    def train(self):
        pass

    def max_over_ranks(self, v):
        return v

    def backward(self, loss):
        loss.backward()

    def step(self):
        return float("nan")


def _tiny_model(seed: int = 0):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    return Qwen3ForCausalLM(cfg).float()


def _batch(seed: int = 1):
    from tcopd.core.signal import pad_right
    from tcopd.pipelines.train.update import UpdateBatch

    g = torch.Generator().manual_seed(seed)
    lengths = [(8, 30), (12, 20), (6, 40), (10, 25), (14, 18), (9, 35)]  # > 64 tokens per pair
    prompts = [torch.randint(0, 64, (p,), generator=g).tolist() for p, _ in lengths]
    responses = [torch.randint(0, 64, (r,), generator=g).tolist() for _, r in lengths]
    T = max(len(r) for r in responses)
    mask = pad_right([torch.ones(len(r)) for r in responses], T)
    old = pad_right([-torch.rand(len(r), generator=g) * 4 - 1 for r in responses], T)
    adv = pad_right([torch.randn(len(r), generator=g) for r in responses], T)
    return UpdateBatch(prompts, responses, mask, old, adv, None)


def test_non_finite_gradient_norm_is_an_error_naming_the_step(monkeypatch):
    from tcopd.pipelines.train import step as step_module
    from tcopd.pipelines.train.update import UpdateSettings, ppo_update
    from tcopd.runtime.training.distributed import Reduce

    with pytest.raises(TrainingError, match="non-finite gradient norm"):
        ppo_update(_NanEngine(_tiny_model()), _batch(), PPOLoss(), UpdateSettings(), 0, Reduce())

    def failing(tr, step, ahead):
        raise TrainingError("non-finite gradient norm (nan) in a PPO update")

    monkeypatch.setattr(step_module, "_phases", failing)
    with pytest.raises(TrainingError, match=r"^step 7: non-finite gradient norm.*last checkpoint"):
        step_module.train_step(None, 6)


def test_update_does_not_depend_on_the_token_budget():
    """ZeRO-2, one process: micro-batches of ≤64 padded tokens vs one of ≤4096 give the same
    weights (guards the ×world_size factor and the global normalisers)."""
    from tcopd.pipelines.train.update import UpdateSettings, ppo_update
    from tcopd.runtime.training.distributed import Reduce
    from tcopd.runtime.training.learner import Learner

    weights, losses = {}, {}
    for budget in (64, 4096):
        learner = Learner(_tiny_model(), lr=1e-3, zero_stage=2, grad_clip=0.0)
        for agg in ("token-mean", "seq-mean-token-mean"):
            losses[budget, agg] = out = ppo_update(
                learner,
                _batch(),
                PPOLoss(aggregation=agg),
                UpdateSettings(epochs=2, mini_batches=2, token_budget=budget),
                seed=3,
                reduce=Reduce(),
            )
            assert out["updates"] == 4
        weights[budget] = {k: v.detach().clone() for k, v in learner.module.state_dict().items()}
    start = _tiny_model().state_dict()
    assert any(not torch.equal(start[k], weights[64][k]) for k in start)  # it did train
    # the reported loss is Σ over micro-batches of their share: a wrong normaliser changes it
    # (AdamW alone would hide a uniform gradient scale)
    for agg in ("token-mean", "seq-mean-token-mean"):
        assert losses[64, agg]["loss"] == pytest.approx(losses[4096, agg]["loss"], abs=1e-6)
    for k in weights[64]:
        torch.testing.assert_close(weights[64][k], weights[4096][k], atol=1e-6, rtol=0)


def test_reference_cancels_exactly_when_the_weights_sum_to_beta():
    from tcopd.core.signal import reference_cancels, training_signal

    one = [TeacherSpec("expert", "e", 1.0)]
    two = [TeacherSpec("expert", "e", 1.5), TeacherSpec("anti_expert", "a", -0.5)]
    assert reference_cancels(one, {}, "active", 1.0)  # OPD
    assert not reference_cancels([TeacherSpec("expert", "e", 1.5)], {}, "active", 1.0)  # G-OPD
    assert not reference_cancels(two, {}, "active", 1.0)  # (1.5 − 0.5)/2 = 0.5 ≠ 1
    assert reference_cancels(two, {}, "none", 1.0)  # 1.5 − 0.5 = 1
    assert not reference_cancels(two, {"code": {"expert": 1.5}}, "none", 1.0)  # one row breaks it
    # and when it cancels, any π_ref gives the same advantage (π_old standing in included)
    g = torch.Generator().manual_seed(0)
    old, ref, lp = ([-torch.rand(5, generator=g)] for _ in range(3))
    a = training_signal(old, ref, {"expert": lp}, one, domains=[None]).adv_BT
    b = training_signal(old, old, {"expert": lp}, one, domains=[None]).adv_BT
    torch.testing.assert_close(a, b)


def test_on_policy_old_from_the_update_forward_equals_a_separate_forward():
    """One epoch × one mini-batch: π_old taken (detached) from the update's forward gives the same
    weights, π_old and entropy as scoring π_old in a separate forward first."""
    from tcopd.core.objective import truncated_is_weight
    from tcopd.core.signal import pad_right
    from tcopd.pipelines.train.update import OnPolicy, UpdateBatch, UpdateSettings, ppo_update
    from tcopd.runtime.scoring.forward import batched_response_logprobs
    from tcopd.runtime.training.distributed import Reduce
    from tcopd.runtime.training.learner import Learner

    base = _batch()
    g = torch.Generator().manual_seed(5)
    partial = base.adv_BT  # the advantage without its −β·lp_old term
    rollout = base.old_logp_BT + 0.01 * torch.randn(base.old_logp_BT.shape, generator=g)
    settings = UpdateSettings(epochs=1, mini_batches=1, token_budget=64)
    # (a) a separate π_old forward, then the usual update
    learner = Learner(_tiny_model(), lr=1e-3, zero_stage=2, grad_clip=0.0)
    old_rows, ent_rows = batched_response_logprobs(
        learner.module, base.prompt_ids, base.response_ids, 4096, 512
    )
    T = base.mask_BT.shape[1]
    old = pad_right(old_rows, T)
    adv = (partial - 1.5 * old) * base.mask_BT
    isw = truncated_is_weight(old, rollout, 5.0) * base.mask_BT
    batch_a = UpdateBatch(base.prompt_ids, base.response_ids, base.mask_BT, old, adv, isw)
    out_a = ppo_update(learner, batch_a, PPOLoss(), settings, 0, Reduce())
    weights_a = {k: v.clone() for k, v in learner.module.state_dict().items()}
    # (b) π_old from the update's forward
    learner = Learner(_tiny_model(), lr=1e-3, zero_stage=2, grad_clip=0.0)
    zeros = torch.zeros_like(base.mask_BT)
    op = OnPolicy(1.5, rollout, 5.0, zeros, zeros.clone())
    batch_b = UpdateBatch(
        base.prompt_ids, base.response_ids, base.mask_BT, zeros, partial, None, op
    )
    out_b = ppo_update(learner, batch_b, PPOLoss(), settings, 0, Reduce())
    torch.testing.assert_close(op.old_logp_BT, old, atol=1e-5, rtol=0)
    torch.testing.assert_close(op.entropy_BT, pad_right(ent_rows, T), atol=1e-5, rtol=0)
    assert out_a["loss"] == pytest.approx(out_b["loss"], abs=1e-6)
    for k, v in learner.module.state_dict().items():
        torch.testing.assert_close(v, weights_a[k], atol=1e-6, rtol=0)


def test_dense_update_equals_a_float64_full_logits_loss():
    """One optimizer step of the dense loss (stored teacher/ref hidden states, chunked, through
    the trainer's update) vs the same step from the naive float64 full-logits reverse KL to the
    TC-OPD target: equal reported loss and equal weights after the step."""
    from tcopd.core.dense import Head
    from tcopd.core.objective import teacher_weights
    from tcopd.pipelines.train.update import DenseTargets, UpdateSettings, ppo_update
    from tcopd.runtime.scoring.scorer import Scorer
    from tcopd.runtime.training.distributed import Reduce
    from tcopd.runtime.training.learner import Learner

    base = _batch()
    teachers = {"expert": _tiny_model(1), "anti_expert": _tiny_model(2)}
    ref = _tiny_model(0)
    scorer = Scorer({"reference": ref, **teachers}, token_budget=64)
    hidden, raw = scorer.hidden_states(base.prompt_ids, base.response_ids, scorer.names)
    heads = {n: Head(h.weight, h.bias, h.scale, h.softcap) for n, h in raw.items()}
    w_BK = teacher_weights(torch.tensor([[1.5, -0.5]] * len(base.response_ids)), "active")
    beta, tau = 1.0, 0.9
    settings = UpdateSettings(
        epochs=1, mini_batches=1, token_budget=64, chunk_size=7, temperature=tau
    )
    dense = DenseTargets(("expert", "anti_expert"), hidden, heads, w_BK, beta)
    batch = dataclasses_replace(base, dense=dense)
    learner = Learner(_tiny_model(0), lr=1e-4, zero_stage=2, grad_clip=0.0)
    out = ppo_update(learner, batch, PPOLoss(), settings, 0, Reduce())
    weights = {k: v.clone() for k, v in learner.module.state_dict().items()}

    def lsm64(model, p, r):
        logits = model(torch.tensor([p + r])).logits[0, len(p) - 1 : len(p) + len(r) - 1]
        return torch.log_softmax(logits.double() / tau, -1)

    learner = Learner(_tiny_model(0), lr=1e-4, zero_stage=2, grad_clip=0.0)
    total, n_tok = 0.0, float(base.mask_BT.sum())
    for p, r in zip(base.prompt_ids, base.response_ids):
        with torch.no_grad():
            lr_, le, la = (
                lsm64(m, p, r) for m in (ref, teachers["expert"], teachers["anti_expert"])
            )
            target = torch.log_softmax(lr_ + (0.75 * (le - lr_) - 0.25 * (la - lr_)) / beta, -1)
        ls = lsm64(learner.module, p, r)
        kl = beta * (ls.exp() * (ls - target)).sum(-1)
        loss = kl.sum() / n_tok  # token-mean over the mini-batch
        learner.backward(loss.float())
        total += float(loss)
    learner.step()
    assert out["loss"] == pytest.approx(total, abs=1e-5)
    # (AdamW's first step is ≈ lr·sign(g): a small lr keeps float noise on g ≈ 0 below 1e-6,
    # while a wrong gradient would move a weight the other way by ~2·lr)
    start = _tiny_model(0).state_dict()
    assert max(float((weights[k] - start[k]).abs().max()) for k in start) > 5e-5
    for k, v in learner.module.state_dict().items():
        torch.testing.assert_close(weights[k], v, atol=1e-6, rtol=0)


def dataclasses_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)

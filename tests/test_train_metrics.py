"""Phase 7, ``metrics.step_row``: one ``metrics.jsonl`` row from a hand-worked batch.

Two responses (lengths 2 and 3) over two domains, two teachers, an IS weight; every expected
value below is worked out by hand from the tensors, not by the code under test. The ranks'
reduction is the identity (one process), so sums and maxima are this rank's.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tcopd.core.signal import Signal
from tcopd.pipelines.train import metrics
from tcopd.pipelines.train.grade import Grades
from tcopd.pipelines.train.score import Scores


class _OneRank:
    def sum(self, d):
        return dict(d)

    def max(self, d):
        return dict(d)

    def gather(self, d):  # pragma: no cover - one process never gathers
        return [d]


def _trainer(domains, scores_reference=True, sleep=True):
    return SimpleNamespace(
        cfg=SimpleNamespace(is_cap=5.0),
        reduce=_OneRank(),
        scores_reference=scores_reference,
        rollout=SimpleNamespace(freed_bytes=2.5e9, sleep_enabled=sleep),
        data=SimpleNamespace(domains=domains),
        dist=SimpleNamespace(device=torch.device("cpu"), distributed=False),
    )


def _batch(sampler=True):
    """Two responses sampled with the weights of version 3; ``sampler``: with the engine's
    log-probs μ (lp_old − lp_μ = [0, −1] and [0, 2, 0] against ``_signal``'s lp_old)."""
    mu = ([-1.0, -1.0], [-0.5, -2.5, -1.0]) if sampler else (None, None)
    completions = [
        SimpleNamespace(response_ids=[5, 6], finish_reason="stop", logprobs=mu[0]),
        SimpleNamespace(response_ids=[7, 8, 9], finish_reason="length", logprobs=mu[1]),
    ]
    return SimpleNamespace(
        completions=completions,
        responses=[c.response_ids for c in completions],
        domains=["math", "code"],
        version=3,
    )


def _signal():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    old = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.5, -1.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-1.0, -0.5, -2.0]])
    teacher = torch.stack(
        [
            torch.tensor([[-0.5, -1.0, 0.0], [-1.0, -1.0, -1.0]]),  # expert
            torch.tensor([[-2.0, -1.0, 0.0], [-1.0, -0.5, -3.0]]),  # anti_expert
        ]
    )
    reward = torch.tensor([[1.0, 0.0, 9.0], [0.5, -0.5, 2.0]])  # 9.0 sits on padding
    return Signal(
        ("expert", "anti_expert"),
        mask,
        old,
        ref,
        teacher,
        torch.ones(2, 2),
        reward,
        torch.zeros(2, 3),
    )


def _scores():
    entropy = [torch.tensor([0.5, 1.5]), torch.tensor([1.0, 1.0, 1.0])]
    return Scores(old=[], entropy=entropy, models={})


UPDATE = {"loss": 0.25, "clip_fraction": 0.1, "approx_kl": 0.01, "grad_norm": 2.0}
TIMES = {"rollout": 1.0, "step": 2.5}


def test_step_row_matches_a_hand_worked_batch():
    is_BT = torch.tensor([[1.0, 0.5, 1.0], [2.0, 1.0, 1.5]])  # padding: exp(0 − 0) = 1
    grades = Grades(torch.tensor([1.0, 0.0]), ungraded=1)
    row = metrics.step_row(
        _trainer(["math", "code", "math"]),
        4,
        _batch(),
        _scores(),
        grades,
        _signal(),
        is_BT,
        UPDATE,
        TIMES,
    )
    assert list(row)[-1] == "peak_mem_gb" and isinstance(row.pop("peak_mem_gb"), dict)
    expected = {
        "step": 5,
        "loss": 0.25,
        "reward_mean": (1.0 + 0.0 + 0.5 - 0.5 + 2.0) / 5,
        # Σ mask·(lp_k − lp_ref) / tokens
        "logratio/expert": (1.0 + 0.0 + 0.0 - 0.5 + 1.0) / 5,
        "logratio/anti_expert": (-0.5 + 0.0 + 0.0 + 0.0 - 1.0) / 5,
        "kl_ref": (0.5 - 1.0 + 0.5 + 0.0 + 1.0) / 5,
        "neg_logp_old": (1.0 + 2.0 + 0.5 + 0.5 + 1.0) / 5,
        "entropy": 5.0 / 5,
        "clip_fraction": 0.1,
        "approx_kl_old": 0.01,
        "grad_norm": 2.0,
        "is_weight_mean": (1.0 + 0.5 + 2.0 + 1.0 + 1.5) / 5,
        "is_weight_max": 2.0,
        "is_weight_min": 0.5,
        # the token whose lp_old − lp_μ = 2 > log 5 is at the cap: 1 of 5
        "is_weight_capped_fraction": 1 / 5,
        # (Σw)² / (N·Σw²) = 6² / (5 · (1 + 0.25 + 4 + 1 + 2.25))
        "is_weight_ess": 36 / (5 * 8.5),
        "policy_version": 3,
        "staleness": 4 - 3,
        # mean(lp_μ − lp_old) = −(0 − 1 + 0 + 2 + 0) / 5
        "kl_sampler_old": -1 / 5,
        "rollout_sleep_freed_gb": 2.5,
        "response_len_mean": 2.5,
        "response_len_max": 3.0,
        "truncated_fraction": 0.5,
        "rollout_accuracy": 0.5,
        "ungraded": 1,
        "responses": 2,
        "responses/code": 1,
        "rollout_accuracy/code": 0.0,
        "response_len_mean/code": 3.0,
        "responses/math": 1,
        "rollout_accuracy/math": 1.0,
        "response_len_mean/math": 2.0,
        "time_rollout_s": 1.0,
        "time_step_s": 2.5,
        "tokens_per_s": 2.0,
    }
    assert list(row) == list(expected)  # the order of metrics.jsonl's fields
    for key, want in expected.items():
        assert row[key] == pytest.approx(want, abs=1e-7), key


def test_step_row_nulls_without_is_grading_reference_or_sleep():
    row = metrics.step_row(
        _trainer(["math"], scores_reference=False, sleep=False),
        0,
        _batch(sampler=False),
        _scores(),
        Grades(torch.zeros(2), 0, graded=False),
        _signal(),
        None,
        UPDATE,
        TIMES,
    )
    for key in (
        "kl_ref",
        "is_weight_mean",
        "is_weight_max",
        "is_weight_min",
        "is_weight_capped_fraction",
        "is_weight_ess",
        "kl_sampler_old",
        "rollout_sleep_freed_gb",
        "rollout_accuracy",
    ):
        assert row[key] is None, key
    assert row["step"] == 1 and row["responses"] == 2 and row["ungraded"] == 0
    assert not any(k.startswith("responses/") for k in row)  # one domain: no per-domain fields

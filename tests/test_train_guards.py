"""What a run guards against before it can go wrong at scale (issue 32): padded vocabulary rows
in the dense target, dropout in the RL update, the dense loss's stored hidden states, and the
on-policy advantage built without aliasing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import make_world, run_cli, tiny_args

from tcopd.core.signal import open_signal, training_signal
from tcopd.core.teachers import TeacherSpec
from tcopd.runtime.models.loading import disable_dropout, load_tokenizer


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(next(model_dir.glob("*.safetensors")))


def test_dense_loss_leaves_padded_vocabulary_rows_alone(tmp_path, capsys):
    # 128 head rows, ~100 tokens: no tokenizer emits the rest. λ = (1.5, −0.5) puts a negative
    # weight on the anti-expert, which without the mask gives those rows mass in p* and so
    # gradient into the student's head rows. (Untied: a random model samples padding ids, whose
    # input embeddings then train; the output head's rows get gradient from the loss alone.)
    world = make_world(tmp_path, vocab_size=128, tie=False)
    n_tokens = len(load_tokenizer(world.tokenizer))
    assert n_tokens < 128
    out = tmp_path / "run"
    code, _, err = run_cli(tiny_args(world, out, "--loss", "dense", "--lr", "1e-2"), capsys)
    assert code == 0, err
    before = _weights(world.student)["lm_head.weight"]
    after = _weights(out / "checkpoints" / "step-000002" / "model")["lm_head.weight"]
    assert (after[:n_tokens] - before[:n_tokens]).abs().max() > 1e-4  # it did train
    assert torch.equal(after[n_tokens:], before[n_tokens:])  # not one bit past the tokenizer
    rows = _rows(out)
    # the dense loss has no ratio: null, not 0
    assert all(r["clip_fraction"] is None and r["approx_kl_old"] is None for r in rows)


def test_dropout_is_off_in_the_update(tmp_path, capsys):
    # attention dropout 0.1 in the model's config; lr ~0, the weights do not change: π_θ / π_old
    # must be 1 in every update (2 epochs: π_old is scored separately, in eval mode, and the
    # update's forward runs in train mode)
    world = make_world(tmp_path, attention_dropout=0.1)
    out = tmp_path / "run"
    args = tiny_args(world, out, "--lr", "1e-30", "--ppo-epochs", "2", "--mini-batches", "1")
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert len(_rows(out)) == 2
    for r in _rows(out):
        assert r["clip_fraction"] == 0.0, r
        assert abs(r["approx_kl_old"]) < 1e-9, r  # rounding only (other micro-batch shapes)


def test_disable_dropout_reports_and_zeroes_every_kind():
    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attention_dropout = 0.1  # what HF attention hands its kernel when training
            self.drop = torch.nn.Dropout(0.2)
            self.is_causal = True

    model = torch.nn.Sequential(Attention(), torch.nn.Dropout(0.3))
    assert disable_dropout(model) == ["0.attention_dropout=0.1", "0.drop.p=0.2", "1.p=0.3"]
    assert model[0].attention_dropout == 0.0 and model[0].drop.p == 0.0 and model[1].p == 0.0
    assert model[0].is_causal is True and disable_dropout(model) == []


def test_lora_dropout_is_refused_in_one_line(tmp_path, capsys):
    args = ["train", "--student", "s", "--data", "d", "--out", str(tmp_path / "run")]
    code, _, err = run_cli([*args, "--lora", "--lora-dropout", "0.1"], capsys)  # before any load
    assert code == 1 and err.count("\n") == 1 and "--lora-dropout 0.1: dropout is off" in err


def test_dense_stored_hidden_states_are_counted_before_step_1(tmp_path, capsys, monkeypatch):
    # 4 prompts × 4 samples × 400 tokens × hidden 3 × 64 (π_ref and two teachers) × 4 bytes
    # = 4.9 MB stored per step; one chunk (8 × 128 × 5 × 12 bytes) and one micro-batch
    # (64 tokens × 192 × 4) are ~0.1 MB. With 2 MB available, only the stored states overflow.
    from tcopd.pipelines.train import setup

    monkeypatch.setattr(setup, "available_memory", lambda device: 2_000_000)
    world = make_world(tmp_path, vocab_size=128)
    capsys.readouterr()  # (the world's own output)
    extra = ["--loss", "dense", "--batch-size", "4", "--samples-per-prompt", "4"]
    extra += ["--max-response-tokens", "400", "--chunk-size", "8", "--train-token-budget", "64"]
    code, _, err = run_cli(tiny_args(world, tmp_path / "run", *extra), capsys)
    assert code == 1 and err.count("\n") == 1, err
    assert "stored hidden states ~0.0 GB (16 responses × 400 tokens × hidden 192" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before step 1


@pytest.mark.parametrize("with_ref", [True, False])
def test_open_signal_is_the_advantage_without_its_old_term(with_ref):
    g = torch.Generator().manual_seed(0)
    lengths = [5, 3, 7]
    rows = lambda: [torch.randn(n, generator=g) for n in lengths]  # noqa: E731
    old, ref, expert, anti = rows(), rows(), rows(), rows()
    beta = 0.5
    # with π_ref: λ = (1.5, −0.5) under "all" (w = 0.75, −0.25; Σ ≠ β); without: Σ w = β
    lams = (1.5, -0.5) if with_ref else (1.5, -0.5 - 1.0 + 2 * beta)
    specs = [TeacherSpec("expert", "e", lams[0]), TeacherSpec("anti", "a", lams[1])]
    kw = dict(domains=[None] * 3, normalization="all", beta=beta)
    kw |= dict(correct_B=torch.tensor([1.0, 0.0, 1.0]), group_B=torch.tensor([0, 0, 1]))
    kw |= dict(outcome_weight=0.3)
    teachers = {"expert": expert, "anti": anti}
    full = training_signal(old, ref if with_ref else old, teachers, specs, **kw)
    opened = open_signal(lengths, ref if with_ref else None, teachers, specs, **kw)
    # the float64 formula: A = Σ_k w_k (lp_k − lp_ref) − β (lp_old − lp_ref) + o_b
    for b, n in enumerate(lengths):
        r = ref[b].double() if with_ref else old[b].double()
        w = [lam / 2 for lam in lams]
        bonus = 0.3 * (kw["correct_B"][b] - (0.5 if b < 2 else 1.0))
        want = w[0] * (expert[b].double() - r) + w[1] * (anti[b].double() - r)
        want = want - beta * (old[b].double() - r) + bonus
        torch.testing.assert_close(full.adv_BT[b, :n].double(), want, atol=1e-5, rtol=0)
        got = opened.adv_BT[b, :n].double() - beta * old[b].double()
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert opened.names == full.names and torch.equal(opened.w_BK, full.w_BK)
    assert torch.equal(opened.mask_BT, full.mask_BT)

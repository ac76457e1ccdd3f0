"""A real pretrained model through the HF paths (slow; in `make test`): SmolLM2-135M-Instruct as
the student, the same weights with a concise few-shot prompt as a context teacher.

Run by `make test-real` (in `.ci/run`; left out of `make test`: ~3 min on 2 cores). The vLLM and
served paths are in test_real_model_vllm.py (`make test-vllm`)."""

from __future__ import annotations

import json

import pytest
import torch
from real_model import CONCISE, QUESTIONS, smollm2_dir, write_chat_rows
from train_fixtures import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.real]


@pytest.fixture(scope="module")
def smol():
    return smollm2_dir()


def _train_args(smol, data, out, *extra):
    return [
        "train", "--student", str(smol), "--expert", str(smol), "--lambdas", "1",
        "--teacher-prompt", f"expert={CONCISE}", "--data", str(data), "--out", str(out),
        "--template", "chat", "--steps", "2", "--batch-size", "2", "--samples-per-prompt", "2",
        "--max-response-tokens", "24", "--max-prompt-tokens", "128", "--lr", "1e-5",
        "--save-every", "2", "--seed", "0", "--device", "cpu", *extra,
    ]  # fmt: skip


def test_imported_model_is_smollm2(smol):
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(smol)
    tok = AutoTokenizer.from_pretrained(smol)
    assert cfg.num_hidden_layers == 30 and cfg.vocab_size == 49152 and tok.chat_template
    record = json.loads((smol / "tcopd_import.json").read_text())
    assert record["max_abs_logit_diff"] <= record["tolerance"]


@pytest.mark.parametrize("loss", ["sampled", "dense"])
def test_train_with_a_context_teacher_then_load_and_eval(smol, tmp_path, capsys, loss):
    from transformers import AutoModelForCausalLM

    data = write_chat_rows(tmp_path / "data.jsonl")
    run = tmp_path / "run"
    code, out, err = run_cli(_train_args(smol, data, run, "--loss", loss), capsys)
    assert code == 0, err[-2000:]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "step" in r and "loss" in r]
    assert len(steps) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    ckpt = run / "checkpoints" / "step-000002" / "model"
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    base = AutoModelForCausalLM.from_pretrained(smol)
    moved = max(
        (a - b).abs().max().item()
        for a, b in zip(model.parameters(), base.parameters(), strict=True)
    )
    assert 0 < moved < 1  # trained, not broken
    if loss == "dense":
        return  # one evaluation is enough
    code, out, err = run_cli(
        [
            "eval",
            "--data",
            str(data),
            "--model",
            str(ckpt),
            "--n",
            "1",
            "--max-tokens",
            "24",
            "--out",
            str(tmp_path / "eval"),
            "--device",
            "cpu",
        ],  # fmt: skip
        capsys,
    )
    assert code == 0, err[-2000:]
    samples = (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == len(QUESTIONS)

"""A real pretrained model through the vLLM paths (`make test-vllm`, vLLM's CPU build):
SmolLM2-135M-Instruct as the student sampled by vLLM in the training loop, as a teacher served by
`tcopd serve-teacher` (with a few-shot context rendered here), and `score --compare-local`
against the same model in transformers."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
import torch
from real_model import CONCISE, QUESTIONS, smollm2_dir, write_chat_rows
from test_served_teacher import TOY, Server, one_error_line, train_args
from train_fixtures import run_cli

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm not installed"),
]


@pytest.fixture(scope="module")
def smol():
    return smollm2_dir()


@pytest.fixture(scope="module")
def server(smol, tmp_path_factory):
    box = Server(tmp_path_factory.mktemp("smol-server"))
    box.serve(smol)
    yield box
    box.kill()


def _args(smol, data, out, *extra):
    return [
        "train", "--student", str(smol), "--data", str(data), "--out", str(out),
        "--template", "chat", "--steps", "2", "--batch-size", "2", "--samples-per-prompt", "2",
        "--max-response-tokens", "24", "--max-prompt-tokens", "320", "--lr", "1e-5",
        "--save-every", "2", "--seed", "0", "--device", "cpu", *extra,
    ]  # fmt: skip


def _steps(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def test_train_with_vllm_rollouts_and_a_context_teacher(smol, tmp_path, capsys):
    data = write_chat_rows(tmp_path / "data.jsonl")
    run = tmp_path / "run"
    args = _args(smol, data, run, "--engine", "vllm", "--expert", str(smol), "--lambdas", "1",
                 "--teacher-prompt", f"expert={CONCISE}")  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert code == 0, err[-3000:]
    steps = _steps(run)
    assert len(steps) == 2
    for r in steps:  # vLLM's sampler and the trainer agree on the real model too (fp32)
        assert abs(r["is_weight_mean"] - 1) < 2e-2, r
        assert r["time_sync_s"] > 0
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "step-000002" / "model")


def test_train_with_a_served_context_teacher(smol, server, tmp_path, capsys):
    data = write_chat_rows(tmp_path / "data.jsonl")
    run = tmp_path / "run"
    args = _args(smol, data, run, "--teacher", f"expert={server.url}:1",
                 "--teacher-prompt", f"expert={CONCISE}")  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert code == 0, err[-3000:]
    assert len(_steps(run)) == 2
    assert server.url in (run / "config.yaml").read_text()


def test_score_compare_local_on_the_served_real_model(smol, server, tmp_path, capsys):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol)
    rows = []
    for i, (q, a) in enumerate(QUESTIONS):
        response = f"Let me see. The answer is \\boxed{{{a}}}.<|im_end|>"
        rows.append({"id": i, "messages": [{"role": "user", "content": q}],
                     "response_ids": tok(response, add_special_tokens=False)["input_ids"]})  # fmt: skip
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scores.jsonl"
    code, printed, err = run_cli([
        "score", "--student", str(smol), "--teacher", f"expert={server.url}:1",
        "--teacher-prompt", f"expert={CONCISE}", "--input", str(path), "--output", str(out),
        "--compare-local",
    ], capsys)  # fmt: skip
    assert code == 0, err[-3000:]
    m = re.search(r"expert served vs local: max \|Δ\|\W*([0-9][0-9.e+-]*)", printed)
    assert m, printed
    print(f"SmolLM2 served (vLLM CPU, fp32) vs local (transformers): max |Δ| {m.group(1)}")
    assert float(m.group(1)) < 5e-2
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(g["logprobs"]["expert"])).all() for g in got)


def test_a_served_teacher_with_another_tokenizer_is_refused_before_any_step(
    server, tmp_path, capsys
):
    """The toy student with SmolLM2 (another vocabulary) served as its anti-expert."""
    from tcopd.runtime.toy.build import ensure_toy

    ensure_toy(TOY)  # the shipped toy world, installed if this machine has none yet
    run = tmp_path / "run"
    code, _, err = run_cli(train_args(run, server.url), capsys)
    line = one_error_line(err)
    assert code == 1 and "tokenizer differs from the student's" in line and server.url in line
    assert not (run / "metrics.jsonl").exists()

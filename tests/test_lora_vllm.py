"""`tcopd train --lora --engine vllm` (vLLM's CPU build, `make test-vllm`): the engine keeps the base
weights and serves the adapter; each sync pushes only the adapter, under a new LoRARequest."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from test_train_vllm import _check_is_weights, _rows, greedy  # the full-weight sync's checks
from train_fixtures import make_world, run_cli, tiny_args

from tcopd.runtime.generation.rollout import HFEngine

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm not installed"),
    pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft not installed"),
]

VLLM_OK = dict(head_dim=32, max_position_embeddings=256)  # vLLM's CPU attention: head_dim >= 32


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("lora-vllm"), n_prompts=8, **VLLM_OK)


def _lora_args(world, out: Path, *extra: str) -> list[str]:
    return tiny_args(
        world, out, "--lora", "--lora-rank", "4", "--zero-stage", "0", "--engine", "vllm", *extra
    )


def _trainer(world, out: Path):
    from tcopd.pipelines.train.config import load_train_config
    from tcopd.pipelines.train.setup import build_trainer
    from tcopd.runtime.training import distributed

    args = tiny_args(world, out)[1:]  # flag-value pairs
    flags: dict = {a[2:].replace("-", "_"): b for a, b in zip(args[::2], args[1::2])}
    for k in ("steps", "batch_size", "samples_per_prompt", "max_response_tokens", "save_every"):
        flags[k] = int(flags[k])
    flags |= dict(lr=0.05, lora=True, lora_rank=4, zero_stage=0, engine="vllm")
    cfg = load_train_config(None, flags)
    return build_trainer(cfg, distributed.init_distributed(cfg.device), lambda *a, **k: None)


def test_after_each_adapter_sync_vllm_samples_from_the_trainers_weights(world, tmp_path):
    from tcopd.pipelines.train.step import train_step

    tr = _trainer(world, tmp_path / "run")
    try:
        # two long prompts sharing a 180-token prefix: KV blocks that vLLM's prefix cache keeps
        # from the first call (they must not survive a sync)
        text = " ".join(f"what is {i % 7} + {i % 5} ?" for i in range(30))
        shared = tr.tokenizer(text, add_special_tokens=False)["input_ids"]
        prompts = tr.data.ids[:4] + [shared + tr.data.ids[0], shared + tr.data.ids[1]]
        before = greedy(HFEngine(tr.learner.module, tr.tokenizer, device="cpu"), prompts)
        assert tr.rollout.adapter is None  # B = 0: step 1's policy is the base model
        assert greedy(tr.rollout, prompts) == before
        rows = [train_step(tr, s) for s in range(2)]
        after = greedy(HFEngine(tr.learner.module, tr.tokenizer, device="cpu"), prompts)
        assert after != before  # the adapter moved: the comparison below can fail
        assert greedy(tr.rollout, prompts) == after
        _check_is_weights(rows)
        # one adapter per sync, each under a new id; only the latest is kept
        assert tr.rollout.adapter.lora_int_id == 2
        assert set(tr.rollout.llm.llm_engine.list_loras()) == {2}
    finally:
        tr.rollout.close()
        if tr.grader is not None:
            tr.grader.close()


def test_cli_run_then_resume_pushes_the_checkpoints_adapter(world, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(_lora_args(world, out, "--steps", "2", "--lr", "0.05"), capsys)
    assert code == 0, err
    assert (out / "checkpoints" / "step-000002" / "adapter" / "adapter_config.json").is_file()
    code, _, err = run_cli(["train", "--resume", str(out), "--steps", "3"], capsys)
    assert code == 0, err
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    # step 3's rollouts come from the resumed engine: IS ≈ 1 only if resume pushed the adapter
    _check_is_weights(rows)


def test_rank_vllm_cannot_serve_is_one_line(world, tmp_path, capsys):
    code, _, err = run_cli(_lora_args(world, tmp_path / "r", "--lora-rank", "600"), capsys)
    assert code == 1
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error")]
    assert len(lines) == 1 and "vLLM serves LoRA ranks 1 to 512, got 600" in lines[0], err
    assert "Traceback" not in err

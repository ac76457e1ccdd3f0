"""`tcopd train --engine vllm`, run for real (vLLM's CPU build, `make test-vllm`): the engine beside
the DeepSpeed model, weights pushed after every update, vLLM's log-probs in the IS weight, 1 and 2
ranks, resume."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from train_fixtures import make_world, run_cli, tiny_args

from tcopd.runtime.generation.rollout import HFEngine, SamplingParams

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm not installed"),
]

VLLM_OK = dict(head_dim=32, max_position_embeddings=256)  # vLLM's CPU attention: head_dim >= 32
BIN = Path(sys.executable).parent
SCRIPT = Path(__file__).parent / "dist_train_script.py"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("vllm-train"), n_prompts=8, **VLLM_OK)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_TARGET_DEVICE="cpu", OMP_NUM_THREADS="1")
    return env


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _check_is_weights(rows: list[dict]) -> None:
    """fp32 on CPU: π_old (DeepSpeed's model) and vLLM's sampler agree to a few 1e-3."""
    for r in rows:
        assert abs(r["is_weight_mean"] - 1) < 3e-3, r
        assert r["is_weight_max"] < 1.01 and r["is_weight_min"] > 0.99, r
        assert r["time_sync_s"] > 0, r


def greedy(engine, prompts):
    sp = SamplingParams(n=1, temperature=0.0, max_new_tokens=12)
    return [c.response_ids for c in engine.generate(prompts, sp)]


def test_after_each_sync_vllm_samples_from_the_trainers_weights(world, tmp_path):
    from tcopd.pipelines.train.config import load_train_config
    from tcopd.pipelines.train.setup import build_trainer
    from tcopd.pipelines.train.step import train_step
    from tcopd.runtime.training import distributed

    args = tiny_args(world, tmp_path / "run", "--engine", "vllm", "--lr", "0.05")[1:]
    flags = {a[2:].replace("-", "_"): b for a, b in zip(args[::2], args[1::2])}
    for k in ("steps", "batch_size", "samples_per_prompt", "max_response_tokens", "save_every"):
        flags[k] = int(flags[k])
    flags["lr"] = float(flags["lr"])
    cfg = load_train_config(None, flags)
    tr = build_trainer(cfg, distributed.init_distributed(cfg.device), lambda *a, **k: None)
    try:
        # two long prompts sharing a 180-token prefix: several full KV blocks that vLLM's prefix
        # cache keeps from the first call (they must not survive a weight update)
        text = " ".join(f"what is {i % 7} + {i % 5} ?" for i in range(30))
        shared = tr.tokenizer(text, add_special_tokens=False)["input_ids"]
        prompts = tr.data.ids[:4] + [shared + tr.data.ids[0], shared + tr.data.ids[1]]
        before = greedy(HFEngine(tr.learner.module, tr.tokenizer, device="cpu"), prompts)
        assert greedy(tr.rollout, prompts) == before
        rows = [train_step(tr, s) for s in range(2)]
        after = greedy(HFEngine(tr.learner.module, tr.tokenizer, device="cpu"), prompts)
        assert after != before  # the weights moved: the comparison below can fail
        assert greedy(tr.rollout, prompts) == after
        _check_is_weights(rows)
    finally:
        tr.rollout.close()
        if tr.grader is not None:
            tr.grader.close()


def _torchrun(world, name: str, *extra: str) -> dict[str, str]:
    root = world.student.parent.parent
    p = subprocess.run(
        [str(BIN / "torchrun"), "--nproc_per_node", "2", str(SCRIPT), str(root), "--name", name]
        + [*extra, "--engine", "vllm"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    digests = dict(re.findall(r"RANK (\d) DIGEST ([0-9a-f]+)", p.stdout))
    assert set(digests) == {"0", "1"}, p.stdout
    return digests


def test_two_ranks_one_engine_each_identical_weights_and_resume(world):
    out = world.student.parent.parent / "run2"
    digests = _torchrun(world, "run2", "--steps", "2")
    assert digests["0"] == digests["1"]
    rows = _rows(out)
    _check_is_weights(rows)  # max and min over both ranks: each rank sampled the synced weights
    digests = _torchrun(world, "run2", "--resume", "1", "--steps", "3")
    assert digests["0"] == digests["1"]
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    # step 3's rollouts come from the resumed engines: IS ≈ 1 on both ranks only if the resume
    # pushed the checkpoint's weights into each rank's engine before its first rollout
    _check_is_weights(rows)


def test_two_ranks_one_step_off_with_vllm(world):
    """--max-staleness 1: each rank's engine generates the next batch in its own processes while
    the rank trains; batch 1 is fresh (IS ≈ 1), later ones one update stale (IS ≠ 1)."""
    out = world.student.parent.parent / "ahead"
    extra = ("--steps", "3", "--max-staleness", "1", "--lr", "0.05")
    digests = _torchrun(world, "ahead", *extra)
    assert digests["0"] == digests["1"]
    rows = _rows(out)
    assert [r["staleness"] for r in rows] == [0, 1, 1]
    _check_is_weights(rows[:1])
    assert all(r["is_weight_max"] > 1.01 or r["is_weight_min"] < 0.99 for r in rows[1:]), rows


def test_engine_that_cannot_start_is_one_line_and_no_checkpoint(
    world, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "100000")  # GiB: more than the machine has
    out = tmp_path / "run"
    code, stdout, err = run_cli(tiny_args(world, out, "--engine", "vllm"), capsys)
    assert code != 0
    # (vLLM's own logger may also write here when an earlier test's capture bound it)
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error")]
    assert len(lines) == 1, err
    assert "failed to start" in lines[0] and "less than requested memory for kv" in lines[0], err
    assert "vllm-rank0.log" in lines[0]
    assert not (out / "checkpoints").exists()

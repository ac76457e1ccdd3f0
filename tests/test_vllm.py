"""vLLM engine (run by `make test-vllm` in its own venv): same outputs as transformers, weight updates."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from helpers_tiny import make_tiny_qwen3, make_tokenizer

from tcopd.runtime.generation.rollout import HFEngine, SamplingParams

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm not installed"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    # In-process engine: state dicts go straight to reload_weights; small KV cache on CPU.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from transformers import AutoModelForCausalLM

    from tcopd.runtime.generation.vllm_engine import VLLMEngine

    root = tmp_path_factory.mktemp("vllm")
    tok_dir = make_tokenizer(root)
    cfg = dict(
        head_dim=32, max_position_embeddings=256
    )  # vLLM's CPU attention needs head_dim >= 32
    path_a = make_tiny_qwen3(root, tok_dir, seed=1, **cfg)
    path_b = make_tiny_qwen3(root, tok_dir, seed=2, **cfg)
    hf_a = AutoModelForCausalLM.from_pretrained(str(path_a)).eval()
    hf_b = AutoModelForCausalLM.from_pretrained(str(path_b)).eval()
    engine = VLLMEngine(
        path_a, dtype="float32", enforce_eager=True, max_model_len=256, gpu_memory_utilization=0.5
    )
    tok = engine.tokenizer
    prompts = [
        tok(t, add_special_tokens=False)["input_ids"]
        for t in ("what is 2 + 3 ?", "the answer is", "x = 4")
    ]
    yield {
        "engine": engine,
        "hf_a": hf_a,
        "hf_b": hf_b,
        "tok": tok,
        "prompts": prompts,
        "path_a": path_a,
    }


def greedy_ids(engine, prompts):
    return [
        c.response_ids
        for c in engine.generate(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=12))
    ]


def reference_logprobs(model, prompt, response, temperature=1.0):
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    lp = torch.log_softmax(
        logits[len(prompt) - 1 : len(prompt) - 1 + len(response)] / temperature, dim=-1
    )
    return lp.gather(1, torch.tensor(response)[:, None]).squeeze(1)


def test_greedy_equals_hf_engine(world):
    hf = HFEngine(world["hf_a"], world["tok"], device="cpu")
    assert greedy_ids(world["engine"], world["prompts"]) == greedy_ids(hf, world["prompts"])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logprobs_close_to_float64_reference(world, temperature):
    sp = SamplingParams(n=2, temperature=temperature, max_new_tokens=10, logprobs=True, seed=3)
    out = world["engine"].generate(world["prompts"], sp)
    assert len(out) == 6
    for c in out:
        assert len(c.logprobs) == len(c.response_ids) >= 1
        ref = reference_logprobs(
            world["hf_a"], world["prompts"][c.prompt_index], c.response_ids, temperature
        )
        torch.testing.assert_close(
            torch.tensor(c.logprobs, dtype=torch.float64), ref, atol=2e-3, rtol=0
        )


def test_same_seed_same_samples(world):
    sp = SamplingParams(n=3, max_new_tokens=8, seed=11)
    a = [c.response_ids for c in world["engine"].generate(world["prompts"], sp)]
    b = [c.response_ids for c in world["engine"].generate(world["prompts"], sp)]
    assert a == b


def test_update_weights_switches_output_to_new_weights(world):
    engine = world["engine"]
    want_b = greedy_ids(HFEngine(world["hf_b"], world["tok"], device="cpu"), world["prompts"])
    want_a = greedy_ids(HFEngine(world["hf_a"], world["tok"], device="cpu"), world["prompts"])
    assert want_a != want_b
    seconds = engine.update_weights(world["hf_b"].state_dict())
    assert seconds > 0
    assert greedy_ids(engine, world["prompts"]) == want_b
    # and back, from an HF checkpoint directory
    engine.update_weights(world["path_a"])
    assert greedy_ids(engine, world["prompts"]) == want_a


def test_many_long_seeded_prompts_in_one_call(world):
    """7,680 prompt tokens in one call, every request seeded: vLLM 0.32's CPU worker crashed when
    such a batch's prefill was split across steps (a CPU generator cannot be rewound)."""
    tok = world["tok"]
    prompts = [
        tok(" ".join(f"what is {i % 7} + {j % 5} ?" for j in range(20)), add_special_tokens=False)[
            "input_ids"
        ]
        for i in range(64)
    ]
    assert sum(map(len, prompts)) > 4096  # more than vLLM's default per-step budget
    sp = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, logprobs=True, seed=3)
    batch = world["engine"].generate(prompts, sp)
    assert len(batch) == 128
    assert all(c.response_ids and len(c.logprobs) == len(c.response_ids) for c in batch)
    again = world["engine"].generate(prompts, sp)  # the same seeds give the same samples
    assert [c.response_ids for c in again] == [c.response_ids for c in batch]

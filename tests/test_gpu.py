"""GPU-only numeric checks (``pytest -m gpu``; skipped without CUDA): the scorer on CUDA.

The reference is the naive full-logits computation in float64 on CPU, with the *same* weights
(rounded to bf16 first where the model under test is bf16), so only the arithmetic differs.
"""

from __future__ import annotations

import copy

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def tiny_qwen3(seed: int = 0) -> torch.nn.Module:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=1000,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    with torch.no_grad():  # peaked distributions: an off-by-one position shows as a large error
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
    return model.eval()


def batch(seed: int = 1) -> tuple[list[list[int]], list[list[int]]]:
    g = torch.Generator().manual_seed(seed)
    lengths = [(7, 300), (3, 41), (12, 170)]  # mixed: padding and micro-batching both happen
    prompts = [torch.randint(0, 1000, (p,), generator=g).tolist() for p, _ in lengths]
    responses = [torch.randint(0, 1000, (r,), generator=g).tolist() for _, r in lengths]
    return prompts, responses


def reference(model: torch.nn.Module, prompts, responses, shift: int = 0) -> list[torch.Tensor]:
    """``log_softmax(model(ids).logits)`` in float64 on CPU; ``shift`` ≠ 0 is a deliberate bug."""
    m = copy.deepcopy(model).to("cpu", torch.float64)
    out = []
    with torch.no_grad():
        for p, r in zip(prompts, responses, strict=True):
            logits = m(torch.tensor([p + r])).logits[0]
            lsm = torch.log_softmax(logits, dim=-1)
            start = len(p) - 1 + shift
            out.append(lsm[start : start + len(r)].gather(1, torch.tensor(r)[:, None])[:, 0])
    return out


def score(model, prompts, responses, dtype, placement="local") -> list[torch.Tensor]:
    from tcopd.runtime.scoring.scorer import Scorer

    m = copy.deepcopy(model).to(dtype)
    scorer = Scorer({"m": m}, placement=placement, device="cuda", token_budget=400, chunk_size=64)
    return scorer.score(prompts, responses).logprobs["m"]


def errors(got: list[torch.Tensor], want: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(g.double() - w).abs() for g, w in zip(got, want, strict=True)])


def test_scorer_float32_cuda_matches_float64_reference():
    model = tiny_qwen3()
    prompts, responses = batch()
    got = score(model, prompts, responses, torch.float32)
    assert [g.shape[0] for g in got] == [len(r) for r in responses]
    for g, w in zip(got, reference(model, prompts, responses), strict=True):
        torch.testing.assert_close(g.double(), w, atol=2e-3, rtol=0)


def test_scorer_bf16_cuda_close_to_float64_reference():
    model = tiny_qwen3().to(torch.bfloat16)  # the reference gets the same rounded weights
    prompts, responses = batch()
    err = errors(
        score(model, prompts, responses, torch.bfloat16), reference(model, prompts, responses)
    )
    assert err.mean() < 0.03 and err.max() < 0.25, (err.mean(), err.max())
    # The tolerances are far below what a misplaced position gives: the test can fail.
    wrong = errors(
        reference(model, prompts, responses, shift=1), reference(model, prompts, responses)
    )
    assert wrong.mean() > 10 * 0.03


def test_scorer_offload_equals_local_on_cuda():
    model = tiny_qwen3(seed=3).to(torch.bfloat16)
    prompts, responses = batch(seed=4)
    local = score(model, prompts, responses, torch.bfloat16, "local")
    offload = score(model, prompts, responses, torch.bfloat16, "offload")
    for a, b in zip(local, offload, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)

"""HF rollout engine on a tiny Qwen3: seeds, stops, sampled ids, sampler log-probs, weight updates."""

from __future__ import annotations

import pytest
import torch
from helpers_tiny import make_tiny_qwen3, make_tokenizer

from tcopd.errors import ConfigError
from tcopd.runtime.generation.rollout import (
    Completion,
    HFEngine,
    SamplingParams,
    make_engine,
    plan_batches,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("rollout")
    tok_dir = make_tokenizer(root)
    path_a = make_tiny_qwen3(root, tok_dir, seed=1)
    path_b = make_tiny_qwen3(root, tok_dir, seed=2)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    model_a = AutoModelForCausalLM.from_pretrained(str(path_a)).eval()
    model_b = AutoModelForCausalLM.from_pretrained(str(path_b)).eval()
    return {"tok": tok, "a": model_a, "b": model_b, "path_a": path_a}


def prompts(tok) -> list[list[int]]:
    texts = ["what is 2 + 3 ?", "the answer is", "please reason step by step and x = 4"]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def reference_logprobs(model, prompt, response, temperature=1.0, top_p=1.0, top_k=0):
    """float64 log-softmax of the model's logits, tempered and top-k/top-p filtered by hand."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    out = []
    for j, tok in enumerate(response):
        z = logits[len(prompt) - 1 + j] / temperature
        if top_k:
            kth = torch.topk(z, top_k).values[-1]
            z = torch.where(z < kth, torch.tensor(float("-inf"), dtype=z.dtype), z)
        if top_p < 1.0:
            p = torch.softmax(z, -1)
            order = torch.argsort(p, descending=True)
            cum = torch.cumsum(p[order], 0)
            keep_sorted = (cum - p[order]) < top_p  # smallest prefix whose mass reaches top_p
            keep = torch.zeros_like(keep_sorted)
            keep[order] = keep_sorted
            z = torch.where(keep, z, torch.tensor(float("-inf"), dtype=z.dtype))
        out.append(torch.log_softmax(z, -1)[tok].item())
    return out


def manual_greedy(model, prompt, steps, eos):
    ids = list(prompt)
    out = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            out.append(nxt)
            ids.append(nxt)
            if nxt in eos:
                break
    return out


def test_same_seed_same_samples_other_seed_differs(tiny):
    eng = HFEngine(tiny["a"], tiny["tok"], device="cpu")
    sp = SamplingParams(n=3, max_new_tokens=12, seed=7)
    a = eng.generate(prompts(tiny["tok"]), sp)
    b = eng.generate(prompts(tiny["tok"]), sp)
    c = eng.generate(prompts(tiny["tok"]), SamplingParams(n=3, max_new_tokens=12, seed=8))
    assert [x.response_ids for x in a] == [x.response_ids for x in b]
    assert [x.response_ids for x in a] != [x.response_ids for x in c]
    assert [(x.prompt_index, x.sample_index) for x in a] == [
        (p, s) for p in range(3) for s in range(3)
    ]
    # samples of one prompt differ from each other (the seed is not reused per row)
    assert len({tuple(x.response_ids) for x in a if x.prompt_index == 0}) > 1


def test_training_mode_is_restored(tiny):
    model = tiny["a"]
    model.train()
    try:
        HFEngine(model, tiny["tok"], device="cpu").generate(
            prompts(tiny["tok"])[:1], SamplingParams(max_new_tokens=2)
        )
        assert model.training
    finally:
        model.eval()


def test_caller_rng_untouched(tiny):
    eng = HFEngine(tiny["a"], tiny["tok"], device="cpu")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    eng.generate(prompts(tiny["tok"])[:1], SamplingParams(n=2, max_new_tokens=4))
    assert torch.equal(torch.rand(3), expected)


def test_greedy_matches_manual_loop_with_left_padding(tiny):
    tok, model = tiny["tok"], tiny["a"]
    eng = HFEngine(model, tok, device="cpu")
    ps = prompts(tok)
    got = eng.generate(ps, SamplingParams(n=1, temperature=0.0, max_new_tokens=10))
    for c in got:
        ref = manual_greedy(model, ps[c.prompt_index], 10, set(eng.eos_ids))
        assert c.response_ids == ref
        assert c.prompt_ids == ps[c.prompt_index]


@pytest.mark.parametrize("temperature,top_p,top_k", [(1.0, 1.0, 0), (0.7, 0.9, 0), (1.3, 1.0, 5)])
def test_sampled_ids_round_trip_and_logprobs_match_float64_reference(
    tiny, temperature, top_p, top_k
):
    tok, model = tiny["tok"], tiny["a"]
    eng = HFEngine(model, tok, device="cpu", token_budget=64)  # several batches
    sp = SamplingParams(
        n=2, temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=10, logprobs=True
    )
    ps = prompts(tok)
    for c in eng.generate(ps, sp):
        assert len(c.logprobs) == len(c.response_ids) >= 1
        ref = reference_logprobs(
            model, ps[c.prompt_index], c.response_ids, temperature, top_p, top_k
        )
        torch.testing.assert_close(
            torch.tensor(c.logprobs, dtype=torch.float64),
            torch.tensor(ref, dtype=torch.float64),
            atol=1e-4,
            rtol=0,
        )
        # the text is the decoding of the sampled ids (EOS, if sampled, is not in the text)
        body = c.response_ids[:-1] if c.finish_reason == "stop" else c.response_ids
        assert c.text == tok.decode(body, skip_special_tokens=True)
        if c.finish_reason == "length":
            assert len(c.response_ids) == 10


def test_model_generation_config_does_not_leak(tiny):
    tok, model = tiny["tok"], tiny["a"]
    saved = model.generation_config
    cfg = type(saved)(top_k=1, temperature=0.05, repetition_penalty=5.0, do_sample=True)
    model.generation_config = cfg
    try:
        eng = HFEngine(model, tok, device="cpu")
        ps = prompts(tok)[:1]
        out = eng.generate(ps, SamplingParams(n=4, max_new_tokens=8, logprobs=True))
        assert model.generation_config is cfg  # restored
    finally:
        model.generation_config = saved
    for c in out:  # full-distribution log-probs: top-k 1 / T=0.05 would give ≈0 for every token
        ref = reference_logprobs(model, ps[0], c.response_ids)
        torch.testing.assert_close(
            torch.tensor(c.logprobs, dtype=torch.float64),
            torch.tensor(ref, dtype=torch.float64),
            atol=1e-4,
            rtol=0,
        )
    assert min(lp for c in out for lp in c.logprobs) < -0.5


def test_stop_string_trims_text_and_ids(tiny):
    tok, model = tiny["tok"], tiny["a"]
    eng = HFEngine(model, tok, device="cpu")
    ps = prompts(tok)[:1]
    free = eng.generate(ps, SamplingParams(n=1, temperature=0.0, max_new_tokens=12))[0]
    tokens = tok.convert_ids_to_tokens(free.response_ids)
    plain = [j for j, t in enumerate(tokens) if j >= 2 and t not in tok.all_special_tokens]
    assert plain, tokens
    stop_word = tokens[plain[0]]
    k = tokens.index(stop_word)  # first occurrence completes the stop
    stopped = eng.generate(
        ps, SamplingParams(n=1, temperature=0.0, max_new_tokens=12, stop=(stop_word,))
    )[0]
    assert stopped.finish_reason == "stop"
    assert (
        stopped.response_ids == free.response_ids[: k + 1]
    )  # up to the token that completed the stop
    assert stopped.text == free.text[: free.text.index(stop_word)]


def test_eos_stops_and_length_reason(tiny):
    from transformers import AutoModelForCausalLM

    tok = tiny["tok"]
    model = AutoModelForCausalLM.from_pretrained(str(tiny["path_a"])).eval()
    eng = HFEngine(model, tok, device="cpu")
    ps = prompts(tok)
    short = eng.generate(ps, SamplingParams(n=1, temperature=0.0, max_new_tokens=3))
    assert all(c.finish_reason == "length" and len(c.response_ids) == 3 for c in short)
    # Make EOS the greedy choice after the first prompt: its output row = 3× the first token's row.
    first = short[0].response_ids[0]
    eos = tok.eos_token_id
    with torch.no_grad():
        w = model.get_output_embeddings().weight
        w[eos] = 3.0 * w[first]
    out = eng.generate(ps[:1], SamplingParams(n=1, temperature=0.0, max_new_tokens=6))[0]
    assert out.response_ids == [eos] and out.finish_reason == "stop" and out.text == ""


def test_token_budget_does_not_change_greedy_output(tiny):
    tok, model = tiny["tok"], tiny["a"]
    sp = SamplingParams(n=2, temperature=0.0, max_new_tokens=8)
    big = HFEngine(model, tok, device="cpu", token_budget=100_000).generate(prompts(tok), sp)
    small = HFEngine(model, tok, device="cpu", token_budget=1).generate(prompts(tok), sp)
    assert [c.response_ids for c in big] == [c.response_ids for c in small]


def test_update_weights_switches_to_new_model(tiny):
    from transformers import AutoModelForCausalLM

    tok = tiny["tok"]
    model = AutoModelForCausalLM.from_pretrained(str(tiny["path_a"])).eval()
    eng = HFEngine(model, tok, device="cpu")
    ref_b = HFEngine(tiny["b"], tok, device="cpu")
    sp = SamplingParams(n=1, temperature=0.0, max_new_tokens=8)
    before = [c.response_ids for c in eng.generate(prompts(tok), sp)]
    want = [c.response_ids for c in ref_b.generate(prompts(tok), sp)]
    assert before != want
    eng.update_weights(tiny["b"].state_dict())
    assert [c.response_ids for c in eng.generate(prompts(tok), sp)] == want


def test_engine_from_path_and_chooser(tiny):
    eng = make_engine("hf", tiny["path_a"], device="cpu")
    assert isinstance(eng, HFEngine)
    out = eng.generate(prompts(tiny["tok"])[:1], SamplingParams(n=1, max_new_tokens=2))
    assert isinstance(out[0], Completion)
    with pytest.raises(ConfigError, match="unknown rollout engine"):
        make_engine("tgi", tiny["path_a"])


def test_bad_sampling_params():
    with pytest.raises(ConfigError, match="n must be"):
        SamplingParams(n=0)
    with pytest.raises(ConfigError, match="top_p"):
        SamplingParams(top_p=0.0)


def test_plan_batches_respects_budget():
    lengths = [5, 3, 9, 2, 2, 30]
    batches = plan_batches(lengths, max_new_tokens=10, token_budget=45)
    assert [i for b in batches for i in b] == list(range(6))
    for b in batches:
        assert len(b) == 1 or len(b) * (max(lengths[i] for i in b) + 10) <= 45


def test_engine_error_finds_the_root_cause_in_the_engine_log(tmp_path):
    """The one-line error of a dead vLLM engine: the worker's exception from its log (past the
    byte where this start began), not the wrappers that point at it."""
    from tcopd.runtime.generation.vllm_engine import engine_error

    log = tmp_path / "vllm-rank0.log"
    old = "(Worker pid=1) ERROR [x.py:1] ValueError: an earlier run's failure\n"
    log.write_text(old)
    log.open("a").write(
        "(Worker pid=8) ERROR 11-27 18:47:01 [multiproc_executor.py:1063] Traceback (most recent call last):\n"
        "(Worker pid=8) ERROR 11-27 18:47:01 [multiproc_executor.py:1063] RuntimeError: CPU Generator does not use offset\n"
        "(EngineCore pid=7) ERROR 11-27 18:47:01 [core.py:1512] EngineCore encountered a fatal error.\n"
        "(EngineCore pid=7) ERROR 11-27 18:47:01 [core.py:1512] RuntimeError: Worker failed with error 'x', please check the stack trace above for the root cause\n"
        "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above) for the root cause.\n"
    )
    wrapper = RuntimeError(
        "EngineCore encountered an issue. See stack trace (above) for the root cause."
    )
    line = engine_error(wrapper, log, start=len(old))
    assert line.startswith("RuntimeError: CPU Generator does not use offset (log: ")
    only_old = tmp_path / "old.log"
    only_old.write_text(old)
    assert engine_error(wrapper, only_old, start=len(old)) == str(
        wrapper
    )  # nothing new: the exception
    value = RuntimeError("1 validation error\n  Value error, max_model_len is too long [type=x]")
    assert engine_error(value, None) == "max_model_len is too long [type=x]"

"""runtime.scoring.scorer and runtime.models.loading on tiny random Qwen3 models, against float64 references."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers_tiny import make_tiny_qwen3, make_tokenizer

from tcopd.errors import ConfigError, DataError, ModelError
from tcopd.runtime.models import loading as rm
from tcopd.runtime.scoring import forward as rf
from tcopd.runtime.scoring import scorer as rs
from tcopd.runtime.scoring.forward import model_response_logprobs
from tcopd.runtime.scoring.scorer import Scorer

TOL = 1e-5


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("scorer")
    tok = make_tokenizer(d)
    return {
        "dir": d,
        "tok": tok,
        "tied": make_tiny_qwen3(d, tok, seed=1, tie=True),
        "untied": make_tiny_qwen3(d, tok, seed=2, tie=False),
    }


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    plens, rlens = (3, 7, 1, 5, 2, 9), (9, 2, 6, 4, 11, 1)
    P = [torch.randint(0, 100, (n,), generator=g).tolist() for n in plens]
    R = [torch.randint(0, 100, (n,), generator=g).tolist() for n in rlens]
    return P, R


def reference64(model, P, R, temperature=1.0, transform=None):
    """log_softmax(model(prompt + response).logits / τ) in float64, one sequence at a time."""
    m64 = copy.deepcopy(model).double().eval()
    out = []
    with torch.no_grad():
        for p, r in zip(P, R, strict=True):
            logits = m64(torch.tensor([p + r])).logits[0, len(p) - 1 : -1]
            if transform is not None:
                logits = transform(logits)
            lsm = torch.log_softmax(logits / temperature, -1)
            out.append(lsm.gather(-1, torch.tensor(r)[:, None])[:, 0])
    return out


def max_err(got, ref):
    return max((g.double() - r).abs().max().item() for g, r in zip(got, ref, strict=True))


@pytest.mark.parametrize("kind", ["tied", "untied"])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("chunk", [1, 4, 512])
def test_model_response_logprobs_matches_float64(world, batch, kind, packed, chunk):
    model = rm.load_causal_lm(world[kind])
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == (kind == "tied")
    P, R = batch
    ref = reference64(model, P, R)
    with torch.no_grad():
        logp_BT = model_response_logprobs(model, P, R, chunk_size=chunk, packed=packed)
    assert logp_BT.dtype == torch.float32 and logp_BT.shape == (len(P), max(map(len, R)))
    assert max_err([logp_BT[b, : len(r)] for b, r in enumerate(R)], ref) <= TOL
    for b, r in enumerate(R):  # right zero padding
        assert torch.all(logp_BT[b, len(r) :] == 0)


@pytest.mark.parametrize("budget", [1, 13, 40, 100_000])
def test_scorer_invariant_to_budget_and_order(world, batch, budget):
    tied, untied = rm.load_causal_lm(world["tied"]), rm.load_causal_lm(world["untied"])
    P, R = batch
    refs = {"a": reference64(tied, P, R), "b": reference64(untied, P, R)}
    scorer = Scorer({"a": tied, "b": untied}, token_budget=budget, chunk_size=3)
    res = scorer.score(P, R)
    for name in ("a", "b"):
        assert [t.shape[0] for t in res.logprobs[name]] == [len(r) for r in R]
        assert max_err(res.logprobs[name], refs[name]) <= TOL
    perm = [4, 0, 5, 2, 1, 3]
    res2 = scorer.score([P[i] for i in perm], [R[i] for i in perm], names=["b"])
    assert list(res2.logprobs) == ["b"]
    assert max_err(res2.logprobs["b"], [refs["b"][i] for i in perm]) <= TOL
    st = res.stats
    assert st["tokens"] == sum(map(len, R)) and st["model_tokens"] == 2 * st["tokens"]
    assert 0.0 <= st["padding_fraction"] < 1.0 and "cpu" in st["peak_mem_gb"]
    if budget == 1:
        assert st["padding_fraction"] == 0.0 and st["micro_batches"] == 2 * len(P)


def test_padding_amount_does_not_matter(world, batch):
    """One short sequence scored alone and next to a much longer one gives the same numbers."""
    model = rm.load_causal_lm(world["tied"])
    P, R = batch
    long_p, long_r = list(range(4, 60)), list(range(10, 90))
    with torch.no_grad():
        alone = model_response_logprobs(model, [P[1]], [R[1]])[0]
        padded = model_response_logprobs(model, [P[1], long_p], [R[1], long_r])[0, : len(R[1])]
    assert (alone - padded).abs().max() <= TOL


def test_temperature(world, batch):
    model = rm.load_causal_lm(world["untied"])
    P, R = batch
    res = Scorer({"m": model}, chunk_size=5, temperature=0.6).score(P, R)
    assert max_err(res.logprobs["m"], reference64(model, P, R, temperature=0.6)) <= TOL


def test_softcap_and_scale_from_config(world, batch):
    model = rm.load_causal_lm(world["untied"])
    P, R = batch
    ref = reference64(model, P, R, transform=lambda z: torch.tanh(z * 0.5 / 2.0) * 2.0)
    model.config.logit_scale = 0.5
    model.config.final_logit_softcapping = 2.0
    with torch.no_grad():
        logp = model_response_logprobs(model, P, R, chunk_size=4)
    assert max_err([logp[b, : len(r)] for b, r in enumerate(R)], ref) <= TOL


class LogitsOnly(torch.nn.Module):
    """A causal LM that exposes only ``forward(...).logits`` (no base model / lm_head)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, **kw):
        return self.inner(**kw)


def test_fallback_without_output_head(world, batch):
    model = rm.load_causal_lm(world["tied"])
    assert rf.output_head(LogitsOnly(model)) is None
    P, R = batch
    with torch.no_grad():
        logp = model_response_logprobs(LogitsOnly(model), P, R)
    assert max_err([logp[b, : len(r)] for b, r in enumerate(R)], reference64(model, P, R)) <= TOL


def test_grad_in_train_mode_matches_plain_path(world, batch):
    P, R = batch
    m1 = rm.load_causal_lm(world["untied"]).train()
    m2 = copy.deepcopy(m1)
    logp, ent = model_response_logprobs(m1, P, R, chunk_size=4, return_entropy=True)
    assert logp.requires_grad and ent.shape == logp.shape
    mask = torch.zeros_like(logp)
    for b, r in enumerate(R):
        mask[b, : len(r)] = 1
    (logp * mask).sum().backward()
    total = 0.0
    for p, r in zip(P, R, strict=True):
        lsm = torch.log_softmax(
            m2(input_ids=torch.tensor([p + r])).logits[0, len(p) - 1 : -1].float(), -1
        )
        total = total + lsm.gather(-1, torch.tensor(r)[:, None]).sum()
    total.backward()
    for (name, a), b in zip(m1.named_parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_offload_placement_same_numbers(world, batch):
    P, R = batch
    local = Scorer({"m": rm.load_causal_lm(world["tied"])}, token_budget=30).score(P, R)
    off = Scorer(
        {"m": rm.load_causal_lm(world["tied"])}, placement="offload", token_budget=30
    ).score(P, R)
    assert max_err(off.logprobs["m"], local.logprobs["m"]) == 0.0


def test_oom_halves_budget_and_retries(world, batch, monkeypatch, caplog):
    P, R = batch
    model = rm.load_causal_lm(world["tied"])
    real = rs.model_response_logprobs
    calls = {"n": 0}

    def flaky(model, prompts, responses, **kw):
        calls["n"] += 1
        if len(prompts) > 1:  # "only single sequences fit"
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, prompts, responses, **kw)

    monkeypatch.setattr(rs, "model_response_logprobs", flaky)
    scorer = Scorer({"m": model}, token_budget=1000)
    with caplog.at_level("WARNING", logger="tcopd.runtime.scoring.scorer"):
        res = scorer.score(P, R)
    assert res.stats["token_budget"] < 1000 and "token budget halved" in caplog.text
    assert max_err(res.logprobs["m"], reference64(model, P, R)) <= TOL
    assert res.stats["micro_batches"] == len(P)
    # the halving holds for that pass only: the next call starts from the configured budget
    assert scorer.token_budget == 1000
    n_before = calls["n"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="tcopd.runtime.scoring.scorer"):
        again = scorer.score(P, R)
    assert calls["n"] > n_before + len(P) and "token budget halved" in caplog.text
    assert max_err(again.logprobs["m"], res.logprobs["m"]) == 0.0


def test_hidden_states_out_of_memory_and_offload(world, batch, monkeypatch, caplog):
    """The dense loss's hidden states: host memory, the same out-of-memory fallback as log-prob
    scoring, and an offloaded model goes back to the host even when the pass fails."""
    P, R = batch
    model = rm.load_causal_lm(world["tied"])
    want, _ = Scorer({"m": model}, token_budget=1000).hidden_states(P, R, ["m"])
    real = rs.response_hidden_states

    def flaky(model, prompts, responses):
        if len(prompts) > 1:  # "only single sequences fit"
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, prompts, responses)

    monkeypatch.setattr(rs, "response_hidden_states", flaky)
    scorer = Scorer({"m": model}, placement="offload", token_budget=1000)
    moves = []
    real_to = model.to
    monkeypatch.setattr(model, "to", lambda device: moves.append(str(device)) or real_to(device))
    with caplog.at_level("WARNING", logger="tcopd.runtime.scoring.scorer"):
        got, heads = scorer.hidden_states(P, R, ["m"])
    assert "token budget halved" in caplog.text and scorer.token_budget == 1000
    assert all(g.device.type == "cpu" for g in got["m"])
    for g, w in zip(got["m"], want["m"], strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)
    assert moves == ["cpu", "cpu"]  # (device = cpu here) there, and back
    moves.clear()

    def broken(model, prompts, responses):
        raise RuntimeError("something else")

    monkeypatch.setattr(rs, "response_hidden_states", broken)
    with pytest.raises(RuntimeError, match="something else"):
        scorer.hidden_states(P, R, ["m"])
    assert moves == ["cpu", "cpu"]  # moved back despite the error


def test_scorer_input_errors(world, batch, monkeypatch):
    scorer = Scorer({"m": rm.load_causal_lm(world["tied"])})
    with pytest.raises(DataError, match="empty response"):
        scorer.score([[1, 2]], [[]])
    with pytest.raises(DataError, match="vocabulary size 100"):
        scorer.score([[1, 2]], [[100]])
    with pytest.raises(ConfigError, match="no model named"):
        scorer.score([[1]], [[2]], names=["nope"])
    # Without a process group (an earlier in-process training run may have left a world of one).
    monkeypatch.setattr(rs.dist, "is_initialized", lambda: False)
    with pytest.raises(ConfigError, match="torchrun"):
        Scorer({}, placement="shard")


# ------------------------------------------------------------------------------ models.py
def test_check_same_tokenizer(world, tmp_path):
    student = rm.load_tokenizer(world["tok"])
    rm.check_same_tokenizer(student, rm.load_tokenizer(world["tied"]), "expert")
    bigger = rm.load_tokenizer(make_tokenizer(tmp_path, vocab_size=120, name="big"))
    with pytest.raises(ModelError, match=r"'expert'.*vocabulary size 120 vs 100"):
        rm.check_same_tokenizer(student, bigger, "expert")
    other = rm.load_tokenizer(world["tok"])
    other.pad_token = "<unk>"
    with pytest.raises(ModelError, match=r"'math'.*pad_token"):
        rm.check_same_tokenizer(student, other, "math")
    # Same size and specials, but "the" and "is" swapped: the probe text's ids differ.
    import helpers_tiny

    words = list(helpers_tiny.WORDS)
    i, j = words.index("the"), words.index("is")
    words[i], words[j] = words[j], words[i]
    orig = helpers_tiny.WORDS
    helpers_tiny.WORDS = words
    try:
        swapped = rm.load_tokenizer(make_tokenizer(tmp_path, name="swapped"))
    finally:
        helpers_tiny.WORDS = orig
    with pytest.raises(ModelError, match=r"'anti_expert'.*probe text token"):
        rm.check_same_tokenizer(student, swapped, "anti_expert")


def test_load_errors(world, tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        rm.load_causal_lm(tmp_path / "missing")
    with pytest.raises(ModelError, match="no config.json"):
        rm.load_causal_lm(world["tok"])
    from transformers import ViTConfig

    ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    ).save_pretrained(tmp_path / "vit")
    with pytest.raises(ModelError, match="not a causal language model"):
        rm.load_causal_lm(tmp_path / "vit")
    assert rm.resolve_dtype("bf16") is torch.bfloat16
    with pytest.raises(ConfigError):
        rm.resolve_dtype("int3")
    m = rm.load_causal_lm(world["tied"], dtype="bfloat16")
    assert next(m.parameters()).dtype is torch.bfloat16 and not m.training


def test_bf16_model_scores_in_float32(world, batch):
    P, R = batch
    m32 = rm.load_causal_lm(world["tied"])
    m16 = rm.load_causal_lm(world["tied"], dtype="bfloat16")
    res = Scorer({"m": m16}, chunk_size=4).score(P, R)
    assert all(t.dtype == torch.float32 for t in res.logprobs["m"])
    assert (
        max_err(res.logprobs["m"], reference64(m32, P, R)) < 0.1
    )  # bf16 weights: close, not exact

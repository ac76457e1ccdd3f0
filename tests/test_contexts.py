"""Teachers that are prompts (runtime/scoring/contexts.py) and chat-template safety (prompts.check_framing).

A context teacher's log-probs are checked against a plain float64 transformers forward on its
full rendering (context + conversation + response, rendered and tokenized as one text), which
also checks that the response positions line up: the rendering of the prompt alone followed by
the response ids is exactly the tokenization of the whole conversation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers_tiny import CHAT_TEMPLATE, make_tiny_qwen3, make_tokenizer
from train_fixtures import run_cli, write_prepared

from tcopd.errors import ConfigError, DataError
from tcopd.runtime.data.prompts import check_framing, render_prompt
from tcopd.runtime.models import loading as rm
from tcopd.runtime.scoring.contexts import (
    Context,
    ContextRenderer,
    load_context_messages,
    load_contexts,
    parse_teacher_prompt,
    plain_context,
)
from tcopd.runtime.scoring.forward import OutputHead
from tcopd.runtime.scoring.scorer import Scorer

CONTEXT = [
    {"role": "system", "content": "please reason step by step"},
    {"role": "user", "content": "what is 1 + 1 ?"},
    {"role": "assistant", "content": "1 + 1 = 2 so the answer is 2"},
]
CONVERSATIONS = [
    [{"role": "user", "content": "what is 2 + 3 ?"}],
    [{"role": "user", "content": "what is 4 * 2 ?"}],
]
RESPONSES = ["2 + 3 = 5 so the answer is 5 <|im_end|>", "the answer is 8 <|im_end|>"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("ctx")
    tok_dir = make_tokenizer(d)
    ctx_file = d / "ctx.yaml"
    ctx_file.write_text(yaml.safe_dump(CONTEXT))
    return {
        "dir": d,
        "tok": rm.load_tokenizer(str(tok_dir)),
        "tok_dir": tok_dir,
        "model": make_tiny_qwen3(d, tok_dir, seed=3),
        "student": make_tiny_qwen3(d, tok_dir, seed=4),
        "ctx_file": ctx_file,
        "data": write_prepared(d / "data.jsonl", n=4),
    }


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _ref64(model_dir, full_ids, n_response):
    """log π(response | everything before) from one float64 forward over the whole sequence."""
    m = rm.load_causal_lm(str(model_dir)).double().eval()
    with torch.no_grad():
        lsm = torch.log_softmax(m(torch.tensor([full_ids])).logits[0], -1)
    pos = torch.arange(len(full_ids) - n_response, len(full_ids))
    return lsm[pos - 1, torch.tensor(full_ids)[pos]]


def _full_rendering(tok, conversation, response):
    """The whole conversation as one text (the chat template with the assistant turn), tokenized
    as one: what a context teacher would see if the response were part of its own transcript."""
    text = tok.apply_chat_template(
        CONTEXT + conversation + [{"role": "assistant", "content": response}], tokenize=False
    )
    return _ids(tok, text)


# ----------------------------------------------------------------------------- parsing
def test_context_file_json_and_yaml(tmp_path):
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"messages": CONTEXT}))
    y = tmp_path / "c.yaml"
    y.write_text(yaml.safe_dump(CONTEXT))
    want = tuple((m["role"], m["content"]) for m in CONTEXT)
    assert load_context_messages(j) == load_context_messages(y) == want
    assert parse_teacher_prompt(" expert = a/b.yaml ") == ("expert", "a/b.yaml")


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "does not exist"),
        ("[]", "non-empty list"),
        ("- {role: bot, content: hi}", "role 'bot'"),
        ("- {role: user, content: q}\n- {role: system, content: s}", "must come first"),
        ("- {role: system, content: s}\n- {role: user, content: q}", "last message is a user"),
        ("- {role: user}", "string 'content'"),
        ("[unclosed", "not valid JSON/YAML"),
    ],
)
def test_bad_context_files_are_one_line(tmp_path, content, needle):
    f = tmp_path / "c.yaml"
    if content is not None:
        f.write_text(content)
    with pytest.raises(ConfigError, match=needle) as e:
        load_context_messages(f)
    assert "\n" not in str(e.value)


def test_teacher_prompt_names_are_checked(world):
    with pytest.raises(ConfigError, match="no teacher named 'coach'"):
        load_contexts([f"coach={world['ctx_file']}"], ["expert"])
    with pytest.raises(ConfigError, match="two prompts"):
        load_contexts([f"expert={world['ctx_file']}"] * 2, ["expert"])
    with pytest.raises(ConfigError, match="NAME=FILE"):
        load_contexts(["expert"], ["expert"])


def test_plain_context_is_written_in_the_plain_format():
    ctx = Context("e", "f", tuple((m["role"], m["content"]) for m in CONTEXT))
    want = (
        "please reason step by step\n\n"
        "Question: what is 1 + 1 ?\nAnswer: 1 + 1 = 2 so the answer is 2\n\n"
    )
    assert plain_context(ctx) == want
    r = ContextRenderer({"e": ctx}, {"e": None}, "plain")
    assert r.text("e", CONVERSATIONS[0]) == want + "Question: what is 2 + 3 ?\nAnswer:"


# ------------------------------------------------------------- log-probs against float64
def test_context_teacher_logprobs_equal_float64_on_its_full_rendering(world):
    tok = world["tok"]
    ctx = Context("expert", "x", tuple((m["role"], m["content"]) for m in CONTEXT))
    renderer = ContextRenderer({"expert": ctx}, {"expert": tok}, "chat")
    student_prompts = [_ids(tok, render_prompt(c, tok, "chat")) for c in CONVERSATIONS]
    responses = [_ids(tok, r) for r in RESPONSES]
    own = renderer.batch(CONVERSATIONS)
    model = rm.load_causal_lm(str(world["model"]))
    got = Scorer({"expert": model, "plain": model}).score(
        student_prompts, responses, prompts_of=own
    )
    for i, (conv, resp) in enumerate(zip(CONVERSATIONS, RESPONSES, strict=True)):
        full = _full_rendering(tok, conv, resp.replace(" <|im_end|>", ""))
        # the boundary: prompt-alone ids + response ids == the whole transcript's ids
        assert own["expert"][i] + responses[i] == full[: len(own["expert"][i]) + len(responses[i])]
        want = _ref64(world["model"], own["expert"][i] + responses[i], len(responses[i]))
        torch.testing.assert_close(got.logprobs["expert"][i].double(), want, atol=1e-5, rtol=0)
        # the same model without the context sees another prompt: other numbers
        plain = _ref64(world["model"], student_prompts[i] + responses[i], len(responses[i]))
        torch.testing.assert_close(got.logprobs["plain"][i].double(), plain, atol=1e-5, rtol=0)
        assert (want - plain).abs().max() > 1e-3


def test_context_teacher_hidden_states_give_the_same_logprobs(world):
    """The dense loss's path: hidden states under the teacher's own prompt, through its head."""
    tok = world["tok"]
    ctx = Context("expert", "x", tuple((m["role"], m["content"]) for m in CONTEXT))
    own = ContextRenderer({"expert": ctx}, {"expert": tok}, "chat").batch(CONVERSATIONS)
    student_prompts = [_ids(tok, render_prompt(c, tok, "chat")) for c in CONVERSATIONS]
    responses = [_ids(tok, r) for r in RESPONSES]
    model = rm.load_causal_lm(str(world["model"]))
    hidden, heads = Scorer({"expert": model}).hidden_states(
        student_prompts, responses, ["expert"], own
    )
    head: OutputHead = heads["expert"]
    for i, resp in enumerate(responses):
        logits = hidden["expert"][i].double() @ head.weight.double().T
        got = torch.log_softmax(logits, -1)[torch.arange(len(resp)), torch.tensor(resp)]
        want = _ref64(world["model"], own["expert"][i] + resp, len(resp))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_prompts_of_refused_for_a_sharded_model_and_checked_in_length(world):
    model = rm.load_causal_lm(str(world["model"]))
    s = Scorer({"expert": model})
    with pytest.raises(DataError, match="1 prompts of 'expert' for 2 responses"):
        s.score([[1, 2], [1, 2]], [[3], [4]], prompts_of={"expert": [[1]]})
    with pytest.raises(DataError, match="vocabulary"):
        s.score([[1, 2]], [[3]], prompts_of={"expert": [[10_000]]})


def test_renderer_refuses_a_sequence_without_messages(world):
    ctx = Context("expert", "x", (("system", "s"),))
    r = ContextRenderer({"expert": ctx}, {"expert": world["tok"]}, "chat")
    with pytest.raises(DataError, match="no messages"):
        r.batch([CONVERSATIONS[0], None])


# ------------------------------------------------------------------- template safety
def _tok_with_template(d: Path, name: str, template: str):
    tok = rm.load_tokenizer(str(make_tokenizer(d, name=name)))
    tok.chat_template = template
    return tok


def test_framing_check_accepts_the_same_template_and_names_the_first_difference(tmp_path):
    a = _tok_with_template(tmp_path, "a", CHAT_TEMPLATE)
    check_framing(a, _tok_with_template(tmp_path, "b", CHAT_TEMPLATE), "expert", "chat")
    check_framing(a, _tok_with_template(tmp_path, "p", "{{ 'x' }}"), "expert", "plain")
    other_header = CHAT_TEMPLATE.replace(
        "<|im_start|> assistant {% endif", "<|im_start|> bot {% endif"
    )
    with pytest.raises(ConfigError, match="'expert'.*assistant header") as e:
        check_framing(a, _tok_with_template(tmp_path, "c", other_header), "expert", "chat")
    assert "first difference at character" in str(e.value) and "\n" not in str(e.value)
    other_end = CHAT_TEMPLATE.replace("}} <|im_end|> {% endfor", "}} <|endoftext|> {% endfor")
    with pytest.raises(ConfigError, match="'anti'.*end of the user turn"):
        check_framing(a, _tok_with_template(tmp_path, "d", other_end), "anti", "chat")


def _ctx_train_args(world, out, *extra):
    return [
        "train",
        "--student", str(world["student"]),
        "--expert", str(world["model"]),
        "--anti-expert", str(world["model"]),
        "--lambdas", "1.5,-0.5",
        "--teacher-prompt", f"expert={world['ctx_file']}",
        "--data", str(world["data"]),
        "--out", str(out),
        "--template", "chat",
        "--steps", "2", "--batch-size", "2", "--samples-per-prompt", "2",
        "--max-response-tokens", "6", "--lr", "1e-3", "--save-every", "1",
        "--score-reference", "always",
        "--device", "cpu",
        *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("loss", ["sampled", "dense"])
def test_train_with_a_context_teacher(world, tmp_path, capsys, monkeypatch, loss):
    """Expert = the model + a few-shot context, anti-expert = the same model without one: the
    model is loaded once for both teachers; the run trains and logs both teachers."""
    loads = []
    real = rm.load_causal_lm

    def counting(path, *a, **k):
        loads.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr("tcopd.pipelines.train.setup.load_causal_lm", counting)
    code, out, err = run_cli(_ctx_train_args(world, tmp_path / loss, "--loss", loss), capsys)
    assert code == 0, err
    assert loads.count(str(world["model"])) == 1  # two teachers, one load
    rows = [json.loads(x) for x in (tmp_path / loss / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in rows if "step" in r]) >= 2
    cfg = yaml.safe_load((tmp_path / loss / "config.yaml").read_text())
    assert cfg["teacher_prompt"] == [f"expert={world['ctx_file']}"]


def test_train_refuses_a_teacher_whose_template_frames_differently(world, tmp_path, capsys):
    other = make_tiny_qwen3(tmp_path, world["tok_dir"], seed=5, name="other")
    cfg = json.loads((other / "tokenizer_config.json").read_text())
    cfg["chat_template"] = CHAT_TEMPLATE.replace("assistant {% endif", "bot {% endif")
    (other / "tokenizer_config.json").write_text(json.dumps(cfg))
    (other / "chat_template.jinja").unlink(missing_ok=True)
    args = _ctx_train_args(world, tmp_path / "run", "--anti-expert", str(other))
    code, out, err = run_cli(args, capsys)
    assert code != 0 and "'anti_expert' frames the response differently" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ------------------------------------------------------------------------------ score
def _score_rows(path: Path, tok, with_messages=True):
    rows = []
    for i, (conv, resp) in enumerate(zip(CONVERSATIONS, RESPONSES, strict=True)):
        row = {"id": i, "response_ids": _ids(tok, resp)}
        if with_messages:
            row["messages"] = conv
        else:
            row["prompt_ids"] = _ids(tok, render_prompt(conv, tok, "chat"))
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _check_scored_with_context(world, out: Path, name: str) -> list[dict]:
    """Every row's ``name`` log-probs equal float64 on the context's own chat rendering."""
    tok = world["tok"]
    got = [json.loads(x) for x in out.read_text().splitlines()]
    for row, conv in zip(got, CONVERSATIONS, strict=True):
        resp = row["response_ids"]
        prompt = _ids(
            tok, tok.apply_chat_template(CONTEXT + conv, tokenize=False, add_generation_prompt=True)
        )
        want = _ref64(world["model"], prompt + resp, len(resp))
        lp = torch.tensor(row["logprobs"][name], dtype=torch.float64)
        torch.testing.assert_close(lp, want, atol=1e-5, rtol=0)
    return got


def test_score_with_a_context_teacher_matches_float64(world, tmp_path, capsys):
    tok = world["tok"]
    rows = _score_rows(tmp_path / "in.jsonl", tok)
    args = [
        "score", "--student", str(world["model"]), "--expert", str(world["model"]),
        "--teacher-prompt", f"expert={world['ctx_file']}", "--lambdas", "1",
        "--input", str(rows), "--output", str(tmp_path / "out.jsonl"), "--device", "cpu",
    ]  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    got = _check_scored_with_context(world, tmp_path / "out.jsonl", "expert")
    for row, conv in zip(got, CONVERSATIONS, strict=True):
        resp = row["response_ids"]
        student_prompt = _ids(tok, render_prompt(conv, tok, "chat"))
        own = _ref64(world["model"], student_prompt + resp, len(resp))
        student = torch.tensor(row["logprobs"]["student"], dtype=torch.float64)
        torch.testing.assert_close(student, own, atol=1e-5, rtol=0)


def test_score_refuses_id_only_rows_for_a_context_teacher(world, tmp_path, capsys):
    rows = _score_rows(tmp_path / "in.jsonl", world["tok"], with_messages=False)
    args = [
        "score", "--student", str(world["model"]), "--expert", str(world["model"]),
        "--teacher-prompt", f"expert={world['ctx_file']}", "--lambdas", "1",
        "--input", str(rows), "--output", str(tmp_path / "out.jsonl"), "--device", "cpu",
    ]  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert code != 0 and "needs its conversation as 'messages'" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.jsonl").exists()


def test_served_context_teacher_in_score_matches_float64(world, tmp_path, capsys):
    """The context teacher on a (fake) vLLM server: its prompts are rendered here, with the
    student's tokenizer (checked equal to the server's), and sent as ids."""
    from test_served_client import FakeVLLM

    fake = FakeVLLM(world["model"])
    try:
        tok = world["tok"]
        rows = _score_rows(tmp_path / "in.jsonl", tok)
        args = [
            "score", "--student", str(world["student"]), "--teacher", f"coach={fake.url}:1",
            "--teacher-prompt", f"coach={world['ctx_file']}",
            "--input", str(rows), "--output", str(tmp_path / "out.jsonl"), "--device", "cpu",
        ]  # fmt: skip
        code, out, err = run_cli(args, capsys)
        assert code == 0, err
    finally:
        fake.stop()
    _check_scored_with_context(world, tmp_path / "out.jsonl", "coach")


def test_train_with_a_served_context_teacher(world, tmp_path, capsys):
    from test_served_client import FakeVLLM

    fake = FakeVLLM(world["model"])
    try:
        args = [
            "train", "--student", str(world["student"]), "--teacher", f"coach={fake.url}:1",
            "--teacher-prompt", f"coach={world['ctx_file']}", "--data", str(world["data"]),
            "--out", str(tmp_path / "run"), "--template", "chat", "--steps", "1",
            "--batch-size", "2", "--samples-per-prompt", "2", "--max-response-tokens", "6",
            "--max-prompt-tokens", "64", "--device", "cpu",
        ]  # fmt: skip
        code, out, err = run_cli(args, capsys)
        assert code == 0, err
        assert fake.sequences >= 4  # the step's responses went to the server
    finally:
        fake.stop()

"""``tcopd score`` end to end on tiny models, and one ``error:`` line per bad input."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml
from helpers_tiny import make_tiny_qwen3, make_tokenizer

from tcopd.cli.main import main
from tcopd.runtime.models import loading as rm


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("score_cli")
    tok = make_tokenizer(d)
    w = {
        "dir": d,
        "student": make_tiny_qwen3(d, tok, seed=1),
        "expert": make_tiny_qwen3(d, tok, seed=2, tie=False),
        "anti": make_tiny_qwen3(d, tok, seed=3),
        "ref": make_tiny_qwen3(d, tok, seed=4),
        "short": make_tiny_qwen3(d, tok, seed=5, name="short", max_position_embeddings=8),
    }
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(5):
        p = torch.randint(0, 100, (2 + i,), generator=g).tolist()
        r = torch.randint(0, 100, (1 + 2 * i,), generator=g).tolist()
        rows.append({"id": f"r{i}", "prompt_ids": p, "response_ids": r, "domain": "math"})
    rows.append({"id": "text", "prompt": "what is 2 + 2 ?", "response": "the answer is 4"})
    w["rows"] = rows
    w["input"] = d / "rollouts.jsonl"
    w["input"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return w


def ref64(path, p, r):
    m = copy.deepcopy(rm.load_causal_lm(path)).double()
    with torch.no_grad():
        lsm = torch.log_softmax(m(torch.tensor([p + r])).logits[0, len(p) - 1 : -1], -1)
    return lsm.gather(-1, torch.tensor(r)[:, None])[:, 0]


def run_cli(args):
    try:
        main(args)
    except SystemExit as e:
        return e.code or 0
    return 0


def test_score_end_to_end(world, tmp_path, capsys):
    out = tmp_path / "scores.jsonl"
    code = run_cli(
        [
            "score", "--student", str(world["student"]), "--reference", str(world["ref"]),
            "--expert", str(world["expert"]), "--anti-expert", str(world["anti"]), "--lambdas", "1.5,-0.5",
            # λ = 0: never loaded (its path does not even exist), not part of K under 'active'
            "--teacher", f"idle={tmp_path / 'nowhere'}:0",
            "--input", str(world["input"]), "--output", str(out), "--token-budget", "24", "--chunk-size", "3",
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "mean reward" in printed and "log-ratio expert" in printed and "tokens/s" in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in world["rows"]]
    tok = rm.load_tokenizer(world["student"])
    for row in rows:
        p = row.get("prompt_ids") or tok(row["prompt"], add_special_tokens=False)["input_ids"]
        r = row.get("response_ids") or tok(row["response"], add_special_tokens=False)["input_ids"]
        assert set(row["logprobs"]) == {"student", "reference", "expert", "anti_expert"}
        lp = {}
        for name, key in (
            ("student", "student"),
            ("reference", "ref"),
            ("expert", "expert"),
            ("anti_expert", "anti"),
        ):
            want = ref64(world[key], p, r)
            got = torch.tensor(row["logprobs"][name], dtype=torch.float64)
            assert (got - want).abs().max() <= 1e-5, name
            lp[name] = want
        # SPEC §1 by hand: K = 2 active teachers, β = 1, old policy = student
        d_e, d_a = lp["expert"] - lp["reference"], lp["anti_expert"] - lp["reference"]
        reward = (1.5 * d_e - 0.5 * d_a) / 2
        adv = reward - (lp["student"] - lp["reference"])
        assert (torch.tensor(row["reward"], dtype=torch.float64) - reward).abs().max() <= 1e-5
        assert (torch.tensor(row["advantage"], dtype=torch.float64) - adv).abs().max() <= 1e-5
    cfg = yaml.safe_load((tmp_path / "scores.jsonl.config.yaml").read_text())
    assert cfg["teachers"][0] == f"expert={world['expert']}:1.5" and cfg["reference"] == str(
        world["ref"]
    )
    # the resolved config reproduces the run (same numbers) when fed back with --config
    out2 = tmp_path / "again.parquet"
    assert (
        run_cli(
            ["score", "--config", str(tmp_path / "scores.jsonl.config.yaml"), "--output", str(out2)]
        )
        == 0
    )
    import pyarrow.parquet as pq

    again = pq.read_table(out2).to_pylist()
    assert again[2]["reward"] == pytest.approx(rows[2]["reward"], abs=1e-6)


def test_reference_defaults_to_student_and_opd(world, tmp_path):
    out = tmp_path / "opd.jsonl"
    args = ["score", "--student", str(world["student"]), "--expert", str(world["expert"])]
    assert run_cli(args + ["--input", str(world["input"]), "--output", str(out)]) == 0
    row = json.loads(out.read_text().splitlines()[3])
    lp = row["logprobs"]
    assert lp["reference"] == lp["student"]
    # K = 1, λ = 1 (OPD): A = lp_expert − lp_old
    want = [e - s for e, s in zip(lp["expert"], lp["student"], strict=True)]
    assert row["advantage"] == pytest.approx(want, abs=1e-6)


def _bad_input(tmp_path, rows=None, text=None):
    p = tmp_path / "bad.jsonl"
    p.write_text(text if text is not None else "".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


BAD = {
    "missing_model": (
        lambda w, t: ["--student", str(t / "nope"), "--expert", str(w["expert"])],
        "does not exist",
    ),
    "not_causal_lm": (None, "not a causal language model"),
    "tokenizer_mismatch": (None, "tokenizer of 'expert' differs"),
    "empty_response": (
        lambda w, t: ["--input", _bad_input(t, [{"prompt_ids": [1], "response_ids": []}])],
        "empty response",
    ),
    "token_id_too_big": (
        lambda w, t: ["--input", _bad_input(t, [{"prompt_ids": [1], "response_ids": [3, 100]}])],
        "token id 100 is outside the vocabulary",
    ),
    "malformed_jsonl": (
        lambda w, t: [
            "--input",
            _bad_input(t, text='{"prompt_ids": [1], "response_ids": [2]}\n{oops\n'),
        ],
        "bad.jsonl:2: malformed JSON",
    ),
    "too_long": (None, "longer than the model's maximum positions (8)"),
    "lambda_count": (lambda w, t: ["--lambdas", "1.5,-0.5,2"], "--lambdas has 3 value(s)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_error_line(world, tmp_path, capsys, case):
    make, needle = BAD[case]
    args = {
        "--student": str(world["student"]),
        "--expert": str(world["expert"]),
        "--anti-expert": str(world["anti"]),
        "--lambdas": "1.5,-0.5",
        "--input": str(world["input"]),
        "--output": str(tmp_path / "out.jsonl"),
    }
    if case == "not_causal_lm":
        from transformers import ViTConfig

        ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(
            tmp_path / "vit"
        )
        args["--expert"] = str(tmp_path / "vit")
    elif case == "tokenizer_mismatch":
        tok = make_tokenizer(tmp_path, vocab_size=120)
        args["--expert"] = str(make_tiny_qwen3(tmp_path, tok, seed=9))
    elif case == "too_long":
        args["--student"] = str(world["short"])
    else:
        extra = make(world, tmp_path)
        for k, v in zip(extra[::2], extra[1::2], strict=True):
            args[k] = v
    code = run_cli(["score"] + [x for kv in args.items() for x in kv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0
    assert len([line for line in lines if line.startswith("error:")]) == 1, err
    assert needle in " ".join(err.split()), err
    assert not (tmp_path / "out.jsonl").exists()

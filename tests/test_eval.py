"""`tcopd eval`: files, summary numbers, resume after interruption, re-grading, bad input, CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics

import pytest
import typer
import yaml
from helpers_tiny import make_tiny_qwen3, make_tokenizer

from tcopd.cli.main import app, main
from tcopd.config import help_of
from tcopd.errors import ConfigError, DataError, ModelError
from tcopd.pipelines.eval import SAMPLE_FIELDS, EvalConfig, run
from tcopd.progress import Event
from tcopd.runtime.evaluation.grading import Grader

TIMING = ("wall_s", "tokens_per_s")
PROBLEMS = [("what is 2 + 3 ?", "5"), ("x = 4 so x + 1 is", "5"), ("the answer of 9 - 2", "7")]


def prepared_row(i: int, question: str, answer: str) -> dict:
    return {
        "data_source": "unit",
        "prompt": [{"role": "user", "content": question}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": answer},
        "extra_info": {"split": "test", "index": i},
        "domain": "math",
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    tok = make_tokenizer(root)
    data = root / "data.jsonl"
    data.write_text(
        "".join(json.dumps(prepared_row(i, q, a)) + "\n" for i, (q, a) in enumerate(PROBLEMS))
    )
    return {
        "root": root,
        "data": data,
        "model_a": make_tiny_qwen3(root, tok, seed=1),
        "model_b": make_tiny_qwen3(root, tok, seed=2),
        "short_ctx": make_tiny_qwen3(root, tok, seed=3, name="short", max_position_embeddings=12),
    }


def config(world, out, **kw) -> EvalConfig:
    base = dict(
        data=str(world["data"]),
        models=(str(world["model_a"]),),
        out=str(out),
        n=3,
        max_tokens=6,
        seed=5,
    )
    base.update(kw)
    return EvalConfig(**base)


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def strip_timing(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in TIMING}


def test_eval_writes_rows_and_a_summary_that_follows_from_them(world, tmp_path):
    events: list[Event] = []
    res = run(config(world, tmp_path / "out"), events.append)
    rows = read_rows(tmp_path / "out" / "samples.jsonl")
    assert len(rows) == len(PROBLEMS) * 3
    assert all(set(SAMPLE_FIELDS) <= set(r) for r in rows)
    assert sorted((r["problem_id"], r["sample_index"]) for r in rows) == [
        (str(p), s) for p in range(3) for s in range(3)
    ]
    for r in rows:
        assert r["finish_reason"] in ("stop", "length")
        assert (r["finish_reason"] == "length") == (r["num_tokens"] == 6)
        assert r["gold"] == PROBLEMS[int(r["problem_id"])][1]
    # the verdicts are what the grader says about (gold, response)
    with Grader(workers=1) as g:
        assert [r["correct"] for r in rows] == g.grade(
            [r["gold"] for r in rows], [r["response"] for r in rows]
        )
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary == res.runs[0].summary
    acc = [
        sum(r["correct"] is True for r in rows if r["problem_id"] == str(p)) / 3 for p in range(3)
    ]
    assert summary["mean_at_n"] == pytest.approx(100 * sum(acc) / 3)
    assert summary["stderr"] == pytest.approx(100 * statistics.stdev(acc) / math.sqrt(3))
    assert set(summary["pass_at_k"]) == {"1", "2", "3"}
    assert summary["mean_tokens"] == pytest.approx(sum(r["num_tokens"] for r in rows) / len(rows))
    assert summary["truncated_fraction"] == pytest.approx(
        sum(r["finish_reason"] == "length" for r in rows) / 9
    )
    for key in ("benchmark", "model", "n", "ungraded", "sampling", "wall_s"):
        assert key in summary
    assert summary["sampling"]["top_k"] == 0 and summary["sampling"]["seed"] == 5
    # progress: Events only, as every other pipeline (demo renders them with its own display)
    assert all(isinstance(e, Event) for e in events)
    name = world["model_a"].name
    assert events[0] == Event("eval", 0, 9, detail=name)
    graded = [e for e in events if e.phase == "graded"]
    assert [(e.done, e.total, e.detail) for e in graded] == [(i, 9, name) for i in range(1, 10)]
    generated = [e for e in events if e.phase == "generated"]
    assert [(e.done, e.total) for e in generated] == [(1, 3), (2, 3), (3, 3)]
    assert all(e.detail.endswith(" tok/s") for e in generated)


class Interrupt(Exception):
    pass


def test_resume_after_interruption_gives_identical_summary(world, tmp_path):
    full = run(config(world, tmp_path / "full")).runs[0].summary

    seen = {"graded": 0}

    def stop_after_four(event: Event) -> None:
        if event.phase == "graded":
            seen["graded"] += 1
            if seen["graded"] == 4:
                raise Interrupt()

    with pytest.raises(Interrupt):
        run(config(world, tmp_path / "cut"), progress=stop_after_four)
    partial = read_rows(tmp_path / "cut" / "samples.jsonl")
    assert 0 < len(partial) < 9
    # a torn last line, as a kill mid-write leaves it
    with open(tmp_path / "cut" / "samples.jsonl", "a") as f:
        f.write('{"problem_id": "2", "sample_')
    events: list[Event] = []
    resumed = run(config(world, tmp_path / "cut"), events.append).runs[0].summary
    assert events[0].phase == "eval" and events[0].done == len(partial) and events[0].total == 9
    assert strip_timing(resumed) == strip_timing(full)
    rows = read_rows(tmp_path / "cut" / "samples.jsonl")
    assert len(rows) == 9  # nothing graded twice
    by_key = lambda rs: {(r["problem_id"], r["sample_index"]): r for r in rs}  # noqa: E731
    assert by_key(rows) == by_key(read_rows(tmp_path / "full" / "samples.jsonl"))


def test_resume_refuses_other_settings(world, tmp_path):
    run(config(world, tmp_path / "o", n=1, max_tokens=2))
    with pytest.raises(ConfigError, match="temperature"):
        run(config(world, tmp_path / "o", n=1, max_tokens=2, temperature=0.5))


def test_regrade_from_samples_hand_written(tmp_path):
    src = tmp_path / "run" / "samples.jsonl"
    src.parent.mkdir()
    rows = [
        ("a", 0, "so \\boxed{033}", "33"),
        ("a", 1, "I get 33", "33"),
        ("b", 0, "\\boxed{\\frac{1}{2}}", "0.5"),
        ("b", 1, "\\boxed{\\frac{1}{3}}", "0.5"),
    ]
    src.write_text(
        "".join(
            json.dumps(
                {
                    "problem_id": p,
                    "sample_index": s,
                    "response": r,
                    "gold": g,
                    "num_tokens": 5,
                    "finish_reason": "stop",
                }
            )
            + "\n"
            for p, s, r, g in rows
        )
    )
    res = run(EvalConfig(from_samples=str(src), out=str(tmp_path / "re")))
    out = read_rows(tmp_path / "re" / "samples.jsonl")
    assert [r["correct"] for r in out] == [True, False, True, False]
    assert [r["extracted"] for r in out] == ["033", None, "\\frac{1}{2}", "\\frac{1}{3}"]
    s = res.runs[0].summary
    assert s["mean_at_n"] == pytest.approx(50.0)
    assert s["pass_at_k"] == {"1": pytest.approx(50.0), "2": pytest.approx(100.0)}
    assert s["stderr"] == pytest.approx(0.0)


def test_regrade_names_missing_fields_with_line(tmp_path):
    src = tmp_path / "s.jsonl"
    src.write_text(
        json.dumps({"problem_id": "a", "sample_index": 0, "response": "x", "gold": "1"})
        + "\n"
        + json.dumps({"problem_id": "a", "response": "x"})
        + "\n"
    )
    with pytest.raises(DataError, match=r"s\.jsonl:2: .*sample_index, gold"):
        run(EvalConfig(from_samples=str(src), out=str(tmp_path / "o")))


def test_too_long_prompt_skip_or_fail(world, tmp_path):
    long_q = " ".join(["the"] * 20)
    data = tmp_path / "long.jsonl"
    data.write_text(
        json.dumps(prepared_row(0, "2 + 3", "5"))
        + "\n"
        + json.dumps(prepared_row(1, long_q, "1"))
        + "\n"
    )
    cfg = dict(
        data=str(data), models=(str(world["short_ctx"]),), n=1, max_tokens=50, template="plain"
    )
    s = run(EvalConfig(out=str(tmp_path / "skip"), **cfg)).runs[0].summary
    assert s["skipped_too_long"] == 1 and s["problems"] == 1
    # the response budget is clamped to what the context leaves, never past it
    assert s["mean_tokens"] <= 12
    with pytest.raises(DataError, match="context is 12"):
        run(EvalConfig(out=str(tmp_path / "fail"), too_long="fail", **cfg))


def test_bad_input(world, tmp_path):
    with pytest.raises(ConfigError, match="aime24, aime25, math500, toy"):
        EvalConfig(benchmark="gsm8k", models=("m",))
    with pytest.raises(ConfigError, match="--n must be at least 1"):
        EvalConfig(benchmark="aime24", models=("m",), n=0)
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    with pytest.raises(ModelError):
        run(config(world, tmp_path / "x", models=(str(not_a_model),)))


def test_cli_two_models_comparison(world, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = [
        "eval",
        "--data",
        str(world["data"]),
        "--model",
        str(world["model_a"]),
        "--model",
        str(world["model_b"]),
    ]
    argv += ["--n", "2", "--max-tokens", "4", "--out", str(out), "--temperature", "0"]
    argv += ["--grade-timeout", "7"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    printed = capsys.readouterr().out
    assert "qwen3-s1-tied" in printed and "qwen3-s2-tied" in printed and "mean@2" in printed
    comparison = json.loads((out / "comparison.json").read_text())
    assert [c["name"] for c in comparison] == ["qwen3-s1-tied", "qwen3-s2-tied"]
    for name in ("qwen3-s1-tied", "qwen3-s2-tied"):
        assert (out / name / "summary.json").is_file() and (out / name / "samples.jsonl").is_file()
    resolved = yaml.safe_load((out / "qwen3-s1-tied" / "config.yaml").read_text())
    assert resolved["models"] == [str(world["model_a"]), str(world["model_b"])]
    assert resolved["grade_timeout_s"] == 7.0 and resolved["temperature"] == 0.0
    # greedy: both samples of a problem are identical
    rows = read_rows(out / "qwen3-s1-tied" / "samples.jsonl")
    by = {}
    for r in rows:
        by.setdefault(r["problem_id"], set()).add(r["response"])
    assert all(len(v) == 1 for v in by.values())


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"n": 0}, "--n must be at least 1"),
        ({"temperature": -0.5}, "--temperature must be >= 0"),
        ({"top_p": 0.0}, "--top-p must be in (0, 1]"),
        ({"top_p": 1.5}, "--top-p must be in (0, 1]"),
        ({"top_k": -1}, "--top-k must be >= 0"),
        ({"max_tokens": 0}, "--max-tokens must be at least 1"),
        ({"limit": 0}, "--limit must be at least 1"),
        ({"grader_workers": 0}, "--grader-workers must be at least 1"),
        ({"grade_timeout_s": 0.0}, "--grade-timeout-s must be > 0"),
        ({"token_budget": 0}, "--rollout-token-budget must be at least 1"),
        ({"tensor_parallel_size": 0}, "--tensor-parallel-size must be at least 1"),
        ({"gpu_memory_utilization": 1.5}, "--gpu-memory-utilization must be in (0, 1]"),
        ({"dtype": "int8"}, "--dtype 'int8' is not supported"),
    ],
)
def test_config_values_are_checked_when_the_config_is_built(bad, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        EvalConfig(benchmark="aime24", models=["m"], **bad)


def test_cli_has_one_flag_per_config_field_with_the_fields_help():
    import tcopd.cli.commands  # noqa: F401  (registers the subcommands on app)

    command = typer.main.get_command(app).commands["eval"]  # type: ignore[attr-defined]
    params = {opt: p for p in command.params for opt in p.opts}
    renamed = {
        "models": "--model",
        "grade_timeout_s": "--grade-timeout-s",
        "token_budget": "--rollout-token-budget",
    }
    for f in dataclasses.fields(EvalConfig):
        if f.name == "benchmark":  # the positional argument
            assert params["benchmark"].help == help_of(EvalConfig, "benchmark")
            continue
        flag = renamed.get(f.name, "--" + f.name.replace("_", "-"))
        assert params[flag].help.startswith(help_of(EvalConfig, f.name)), flag
    assert params["--model"].multiple and "--config" in params


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["eval", "gsm8k", "--model", "m"],
            "unknown benchmark 'gsm8k'; known: aime24, aime25, math500, toy",
        ),
        (["eval", "aime24", "--model", "m", "--n", "0"], "--n must be at least 1"),
    ],
)
def test_cli_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "error:" in err and message in " ".join(err.split())
    assert "Traceback" not in err


@pytest.mark.slow
def test_cli_on_the_toy_world(tmp_path, capsys):
    toy = pytest.importorskip("tcopd.runtime.toy")
    if not hasattr(toy, "ensure_toy"):
        pytest.skip("toy world not built in this checkout")
    out = tmp_path / "toy"
    with pytest.raises(SystemExit) as e:
        main(["eval", "toy", "--n", "2", "--max-tokens", "64", "--limit", "4", "--out", str(out)])
    assert e.value.code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmark"] == "toy" and summary["problems"] == 4 and summary["n"] == 2
    assert len(read_rows(out / "samples.jsonl")) == 8


def test_per_domain_summary_when_the_benchmark_has_several_domains(world, tmp_path):
    data = tmp_path / "mixed.jsonl"
    problems = PROBLEMS + [("y = 2 so y + y is", "4")]
    rows = [
        prepared_row(i, q, a) | {"domain": "code" if i % 2 else "math"}
        for i, (q, a) in enumerate(problems)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run(config(world, tmp_path / "out", data=str(data)))
    samples = read_rows(tmp_path / "out" / "samples.jsonl")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary["domains"]) == {"math", "code"}
    for d in ("math", "code"):
        mine = [r for r in samples if r["domain"] == d]
        ids = sorted({r["problem_id"] for r in mine})
        acc = [sum(r["correct"] is True for r in mine if r["problem_id"] == p) / 3 for p in ids]
        got = summary["domains"][d]
        assert got["problems"] == 2
        assert got["mean_at_n"] == pytest.approx(100 * sum(acc) / 2)
        assert got["mean_tokens"] == pytest.approx(sum(r["num_tokens"] for r in mine) / len(mine))
    # one domain: no per-domain block
    run(config(world, tmp_path / "one"))
    assert "domains" not in json.loads((tmp_path / "one" / "summary.json").read_text())

"""The arith tasks and what they need: answers read as the last number, `tcopd eval --context`,
`--problems-per-call` (fixed groups, exact on resume), `tcopd prepare arith`."""

from __future__ import annotations

import json

import pytest
from helpers_tiny import make_tiny_qwen3, make_tokenizer

from tcopd.cli.main import main
from tcopd.errors import ConfigError, DataError
from tcopd.pipelines.eval import EvalConfig, run
from tcopd.runtime.data import arith, datasets
from tcopd.runtime.evaluation.grading import Grader, extract_answer, extract_last_number


@pytest.mark.parametrize(
    "text, number",
    [
        ("3 + 4 = 7.", "7"),
        ("The answer is 12", "12"),
        ("about 1,200 people", "1200"),
        ("it is -3 degrees", "-3"),
        ("9-4", "4"),  # a minus after a digit is subtraction, not a sign
        ("half is 2.5, so", "2.5"),
        ("\\boxed{17} and then 18", "18"),
        ("no number here", None),
        ("", None),
    ],
)
def test_last_number_by_hand(text, number):
    assert extract_last_number(text) == number
    assert extract_answer(text, "last_number") == number


def test_the_grader_reads_the_format_it_is_given():
    responses = ["So 3 + 4 = 7.", "I think 8, maybe 7", "\\boxed{7} is it, or 9", "seven"]
    with Grader(workers=1, answer_format="last_number") as g:
        assert g.grade(["7"] * 4, responses) == [True, True, False, False]
    with Grader(workers=1) as g:  # the default: the last box
        assert g.grade(["7"] * 4, responses) == [False, False, True, False]
        g.submit("k", "7", "So 3 + 4 = 7.", answer_format="last_number")  # one call's own format
        assert g.results() == {"k": True}
    with pytest.raises(ValueError, match="unknown answer format"):
        Grader(workers=1, answer_format="first_word")


def _row(q: str, a: str, fmt: str | None) -> dict:
    reward = {"style": "rule", "ground_truth": a} | ({"answer_format": fmt} if fmt else {})
    return {
        "data_source": "u",
        "prompt": [{"role": "user", "content": q}],
        "ability": "math",
        "reward_model": reward,
        "extra_info": {"index": 0},
        "domain": "math",
    }


def test_rows_name_a_known_format_and_a_file_has_one(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_row("q", "1", "first_word")) + "\n")
    with pytest.raises(DataError, match="answer_format 'first_word' is not one of boxed"):
        datasets.load_prepared(bad)
    mixed = [_row("q", "1", None), _row("q", "2", "last_number")]
    with pytest.raises(DataError, match="mix answer formats"):
        datasets.answer_format_of(mixed, "m.jsonl")
    assert datasets.answer_format_of([_row("q", "1", None)], "x") == "boxed"


def test_a_task_splits_once_held_out_never_trained_on():
    train, test = arith.split("add20", seed=0, test_size=200)
    assert len(test) == 200 and len(train) == 21 * 21 - 200
    assert not set(train) & set(test)
    assert arith.split("add20", 0, 200) == (train, test)  # same seed, same split
    assert arith.split("add20", 1, 200)[1] != test
    for q, a in test:  # every answer is the question's own sum, computed here independently
        x, y = q.removeprefix("What is ").removesuffix("?").split(" + ")
        assert int(a) == int(x) + int(y)
    for name, task in arith.TASKS.items():
        problems = task.problems()
        assert len(set(problems)) == len(problems) > 200, name
    with pytest.raises(ConfigError, match="unknown arith task"):
        arith.split("nope", 0, 10)
    with pytest.raises(ConfigError, match="--test-size"):
        arith.split("sub20", 0, 230)


def test_prepare_arith_writes_rows_read_as_the_last_number(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["prepare", "arith", "--task", "larger", "--test-size", "50", "--out", str(tmp_path)])
    assert done.value.code == 0
    test = datasets.load_prepared(tmp_path / "test.parquet")
    train = datasets.load_prepared(tmp_path / "train.jsonl")
    assert len(test) == 50 and len(train) == len(arith.TASKS["larger"].problems()) - 50
    assert datasets.answer_format_of(test, "t") == "last_number"
    q = test[0]["prompt"][0]["content"]
    a, b = q.removeprefix("Which number is larger, ").removesuffix("?").split(" or ")
    assert test[0]["reward_model"]["ground_truth"] == str(max(int(a), int(b)))
    with pytest.raises(SystemExit) as failed:
        main(["prepare", "arith", "--task", "nope", "--out", str(tmp_path)])
    assert failed.value.code != 0
    assert "unknown arith task 'nope'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("arith")
    tok = make_tokenizer(root)
    rows = [_row(f"what is {i} + 1 ?", str(i + 1), "last_number") for i in range(7)]
    for i, r in enumerate(rows):
        r["extra_info"] = {"index": i}
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    context = root / "context.yaml"
    context.write_text(
        "- role: system\n  content: answer with a number\n"
        "- role: user\n  content: what is 2 + 1 ?\n- role: assistant\n  content: '3'\n"
    )
    return {"data": data, "model": make_tiny_qwen3(root, tok, seed=1), "context": context}


def _eval(world, out, **kw) -> EvalConfig:
    base = dict(data=str(world["data"]), models=[str(world["model"])], out=str(out), n=2)
    return EvalConfig(**{**base, "max_tokens": 5, "seed": 3, **kw})


def _rows(path):
    return [json.loads(x) for x in (path / "samples.jsonl").read_text().splitlines()]


def test_eval_reads_the_last_number_and_puts_the_context_first(world, tmp_path):
    run(_eval(world, tmp_path / "plain"))
    run(_eval(world, tmp_path / "ctx", context=str(world["context"])))
    for name in ("plain", "ctx"):
        rows = _rows(tmp_path / name)
        assert len(rows) == 14
        for r in rows:
            assert r["answer_format"] == "last_number"
            assert r["extracted"] == extract_last_number(r["response"])
            assert r["correct"] == (
                r["extracted"] is not None and int(float(r["extracted"])) == int(r["gold"])
            )
    ctx = _rows(tmp_path / "ctx")
    for r in ctx:  # the chat template renders context + the problem's own turn
        assert r["prompt"].startswith("<|im_start|> system answer with a number <|im_end|> ")
        assert "what is 2 + 1 ? <|im_end|> <|im_start|> assistant 3 <|im_end|>" in r["prompt"]
        assert r["prompt"].endswith("<|im_start|> assistant ")
    assert not any("answer with a number" in r["prompt"] for r in _rows(tmp_path / "plain"))
    with pytest.raises(ConfigError, match="does not exist"):
        run(_eval(world, tmp_path / "missing", context=str(tmp_path / "nope.yaml")))


def test_problems_per_call_groups_are_fixed_and_exact_on_resume(world, tmp_path):
    key = lambda rows: {(r["problem_id"], r["sample_index"]): r["response"] for r in rows}  # noqa: E731
    run(_eval(world, tmp_path / "k1"))
    run(_eval(world, tmp_path / "k3", problems_per_call=3))
    full = key(_rows(tmp_path / "k3"))
    assert len(full) == 14 and full.keys() == key(_rows(tmp_path / "k1")).keys()
    # one call per group: problem 0's samples equal a run of only the first group's problems
    run(_eval(world, tmp_path / "first", problems_per_call=3, limit=3))
    assert key(_rows(tmp_path / "first")) == {k: v for k, v in full.items() if int(k[0]) < 3}
    # resume: drop rows of problems 1 and 5, run again: the same samples, nothing twice
    kept = [r for r in _rows(tmp_path / "k3") if r["problem_id"] not in ("1", "5")]
    (tmp_path / "k3" / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    run(_eval(world, tmp_path / "k3", problems_per_call=3))
    resumed = _rows(tmp_path / "k3")
    assert len(resumed) == 14 and key(resumed) == full
    with pytest.raises(ConfigError, match="problems_per_call"):
        run(_eval(world, tmp_path / "k3", problems_per_call=2))  # another grouping, same dir
    with pytest.raises(ConfigError, match="--problems-per-call must be at least 1"):
        _eval(world, tmp_path / "z", problems_per_call=0)


def test_a_run_written_before_these_settings_existed_still_resumes(world, tmp_path):
    out = tmp_path / "old"
    run(_eval(world, out))
    config = (out / "config.yaml").read_text().splitlines()
    old = [x for x in config if not x.startswith(("problems_per_call:", "context:"))]
    assert len(old) == len(config) - 2
    (out / "config.yaml").write_text("\n".join(old) + "\n")
    run(_eval(world, out))  # the defaults fill what the old file lacks: the same run
    with pytest.raises(ConfigError, match="problems_per_call=1"):
        run(_eval(world, out, problems_per_call=2))


def test_training_reads_the_files_format_and_refuses_held_out_rows_in_another(tmp_path):
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from tcopd.pipelines.train.setup import _prompts

    tok = AutoTokenizer.from_pretrained(make_tokenizer(tmp_path))
    files = {}
    for name, fmt in (("numbers", "last_number"), ("boxes", None)):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text(json.dumps(_row("what is 2 + 1 ?", "3", fmt)) + "\n")
    cfg = SimpleNamespace(template="plain", max_prompt_tokens=64)
    data, held_out = _prompts(
        SimpleNamespace(**vars(cfg), data=str(files["numbers"]), eval_data=str(files["numbers"])),
        tok,
    )
    assert data.answer_format == held_out.answer_format == "last_number"
    with pytest.raises(ConfigError, match="reads answers as boxed"):
        _prompts(
            SimpleNamespace(**vars(cfg), data=str(files["numbers"]), eval_data=str(files["boxes"])),
            tok,
        )

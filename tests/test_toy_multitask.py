"""The multi-task toy world (issue 17): the data and styles at a tiny size, the file layout of a
small build (seconds) and its CLI, and (slow) the full world's shape: each teacher ≥ 40 points
above the student on its own domain and below the student + 10 on the other."""

from __future__ import annotations

import random
import re
import time

import pytest

from tcopd.runtime.toy import problems as P

EQ = re.compile(r"(\d+) ([+-]) (\d+) = (\d+)")


def _equations_ok(text: str) -> int:
    eqs = EQ.findall(text)
    for a, op, b, c in eqs:
        assert (int(a) + int(b) if op == "+" else int(a) - int(b)) == int(c), text
    return len(eqs)


def _boxed(text: str) -> int:
    return int(re.findall(r"\\boxed\{(\d+)\}", text)[-1])


def _gold(prompt: str) -> int:
    """The answer read from the prompt alone: a program run, or a word problem's verbs."""
    question = prompt.removeprefix("Question: ").removesuffix("\nAnswer:")
    if question.startswith("What does this program print?"):
        env: dict[str, int] = {}
        lines = question.splitlines()[1:]
        for line in lines[:-1]:
            exec(line, {}, env)  # straight-line integer arithmetic
        return env[re.fullmatch(r"print\((\w)\)", lines[-1]).group(1)]
    sentences = re.split(r"(?<=\.) ", question)
    value = int(re.search(r"has (\d+)", sentences[0]).group(1))
    for s in sentences[1:-1]:
        verb, n = re.fullmatch(r"(?:Then )?\w+ (.+) (\d+)\.", s).groups()
        value += int(n) if verb in P.ADD_VERBS else -int(n)
    return value


def test_random_print_traces_right_and_boxes_a_random_variable():
    rng = random.Random(0)
    hits = 0
    for _ in range(400):
        p = P.make_code(rng)
        text = P.random_print(p, rng)
        assert _equations_ok(text) == len(p.steps)
        assert text.rsplit(". ", 1)[0] == P.concise(p).rsplit(". ", 1)[0]  # the same trace
        values = {p.start, *P.run_ops(p.start, [(op, b) for op, b, _ in p.steps])}
        assert _boxed(text) in values
        hits += _boxed(text) == p.answer
    assert 0.2 < hits / 400 < 0.45  # 1/3 or 1/4 by chance (more where values coincide)


@pytest.fixture(scope="module")
def corpora():
    from tcopd.runtime.toy.multitask import SETTINGS, make_corpora

    return make_corpora(3, SETTINGS["small"])


def test_corpora_rows_splits_and_domains(corpora):
    from tcopd.runtime.toy.multitask import SETTINGS

    s, rows = SETTINGS["small"], corpora["rows"]
    for split, n in (("train", s.train_rows), ("test", s.test_rows)):
        for d in ("math", "code"):
            assert len(rows[(split, d)]) == n
            assert {r["domain"] for r in rows[(split, d)]} == {d}
            for r in rows[(split, d)]:
                assert str(_gold(r["prompt"][0]["content"])) == r["reward_model"]["ground_truth"]
        mixed = rows[(split, "mixed")]
        assert [r["domain"] for r in mixed[:4]] == ["math", "code", "math", "code"]
        assert sorted(map(str, mixed)) == sorted(
            map(str, rows[(split, "math")] + rows[(split, "code")])
        )
    test_q = {r["prompt"][0]["content"] for k, v in rows.items() if k[0] == "test" for r in v}
    train_q = {r["prompt"][0]["content"] for k, v in rows.items() if k[0] == "train" for r in v}
    sft_q = {q.removeprefix("Question: ") for pairs in corpora["sft"].values() for q, _ in pairs}
    sft_q = {q.removesuffix("\nAnswer:") for q in sft_q}
    assert not test_q & train_q and not test_q & sft_q


def test_corpora_styles_per_model(corpora):
    """Student: right arithmetic, wrong behaviour on both domains; each teacher concise and right
    on its own domain, verbose and wrong on the other."""
    sft = corpora["sft"]
    for name in ("student", "math_teacher", "code_teacher"):
        right: dict[str, list[bool]] = {"math": [], "code": []}
        verbose: dict[str, list[bool]] = {"math": [], "code": []}
        for prompt, target in sft[name]:
            domain = "code" if "program print" in prompt else "math"
            _equations_ok(target)  # every equation any model sees is arithmetically right...
            right[domain].append(_boxed(target) == _gold(prompt))
            verbose[domain].append(target.startswith(" Let us restate"))
        if name == "student":
            for d in ("math", "code"):
                assert 0 < sum(right[d]) < 0.6 * len(right[d]) and not any(verbose[d])
        else:
            own = "math" if name == "math_teacher" else "code"
            other = "code" if own == "math" else "math"
            assert all(right[own]) and not any(verbose[own])
            # ...but these end wrong (a guessed box is right by chance now and then)
            assert sum(right[other]) <= 0.1 * len(right[other]) and all(verbose[other])


def test_same_seed_same_corpora():
    from tcopd.runtime.toy.multitask import SETTINGS, make_corpora

    s = SETTINGS["small"]
    a, b = make_corpora(3, s), make_corpora(4, s)
    assert a == make_corpora(3, s)
    assert a["rows"][("test", "math")] != b["rows"][("test", "math")]


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    from tcopd.runtime.toy.multitask import ensure_toy_multitask

    root = tmp_path_factory.mktemp("toy-mt") / "world"
    seen = []
    world = ensure_toy_multitask(root, seed=5, size="small", progress=seen.append)
    return world, seen


def test_small_build_layout_and_models(small_world):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tcopd.runtime.data.datasets import load_prepared

    world, seen = small_world
    phases = {e.phase for e in seen}
    assert phases >= {"data", "student", "math_teacher", "code_teacher", "table math", "table code"}
    assert (world.root / "toy_multitask.json").is_file() and not (world.root / "toy.json").exists()
    names = sorted(p.name for p in (world.root / "data").iterdir())
    assert names == sorted(
        f"{split}_{k}.{ext}"
        for split in ("train", "test")
        for k in ("math", "code", "mixed")
        for ext in ("parquet", "jsonl")
    )
    for files in (world.train_files, world.test_files):
        assert set(files) == {"math", "code", "mixed"}
        for key, f in files.items():
            rows = load_prepared(f)
            assert rows == load_prepared(f.with_suffix(".jsonl"))
            domains = {r["domain"] for r in rows}
            assert domains == ({"math", "code"} if key == "mixed" else {key})
    assert set(world.models) == {"student", "math_teacher", "code_teacher"}
    assert world.teachers == {"math": world.math_teacher, "code": world.code_teacher}
    tok = AutoTokenizer.from_pretrained(str(world.tokenizer))
    for path in world.models.values():
        model = AutoModelForCausalLM.from_pretrained(str(path))
        assert type(model).__name__ == "Qwen3ForCausalLM"
        assert AutoTokenizer.from_pretrained(str(path)).get_vocab() == tok.get_vocab()
        with torch.no_grad():
            assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, len(tok))


def test_small_build_table(small_world):
    world, _ = small_world
    table = world.table()
    assert set(table["domains"]) == {"math", "code"}
    for t in table["domains"].values():
        assert t["problems"] == 12 and t["temperature"] == 1.0
        assert set(t["models"]) == {"student", "math_teacher", "code_teacher"}
        for r in t["models"].values():
            assert 0 <= r["accuracy"] <= 1 and r["accuracy_se"] >= 0 and r["mean_length"] > 0
    assert set(table["checks"]) == {
        f"{t}_{k}_minus_student_points"
        for t in ("math_teacher", "code_teacher")
        for k in ("own", "other")
    }
    md = world.table_md.read_text()
    assert "| math_teacher |" in md and "code accuracy (%)" in md and "Build time" in md


def test_reuse_and_the_two_worlds_refuse_each_other(small_world, tmp_path):
    from tcopd.errors import DataError
    from tcopd.runtime.toy import ensure_toy
    from tcopd.runtime.toy.multitask import ensure_toy_multitask

    world, _ = small_world
    stamp = world.student.joinpath("model.safetensors").stat().st_mtime_ns
    t0 = time.time()
    assert ensure_toy_multitask(world.root, seed=5, size="small") == world
    assert time.time() - t0 < 1.0
    assert world.student.joinpath("model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="not a toy world"):
        ensure_toy(world.root, size="small")  # never builds over the multi-task world
    (tmp_path / "toy.json").write_text('{"seed": 0}')
    with pytest.raises(DataError, match="not a multi-task toy world"):
        ensure_toy_multitask(tmp_path, size="small")
    with pytest.raises(DataError, match="unknown multi-task toy world size"):
        ensure_toy_multitask(tmp_path, size="huge")


def test_default_root(monkeypatch, tmp_path):
    from tcopd.runtime.toy.multitask import default_root

    monkeypatch.setenv("TCOPD_TOY_MULTITASK_DIR", str(tmp_path / "x"))
    assert default_root() == tmp_path / "x"
    monkeypatch.delenv("TCOPD_TOY_MULTITASK_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_root() == tmp_path / "cache" / "tcopd" / "toy-multitask"


def _cli(args, capsys):
    from tcopd.cli.main import main

    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_prepare_toy_multitask_prints_the_table(small_world, capsys):
    world, _ = small_world
    args = ["prepare", "toy", "--multitask", "--small", "--seed", "5", "--out", str(world.root)]
    code, out, _ = _cli(args, capsys)
    assert code == 0
    assert "multi-task toy world (small, seed 5)" in out and "(reused)" in out
    assert "math_teacher" in out and "code accuracy" in out
    assert str(world.train_files["mixed"]) in out


def test_cli_multitask_is_for_toy_only(capsys):
    code, _, err = _cli(["prepare", "aime25", "--multitask"], capsys)
    assert code != 0 and "--multitask is for 'tcopd prepare toy'" in err


# ------------------------------------------------------------------------------ the full world


def _remeasure(model_dir, rows, seed: int, max_new_tokens: int) -> float:
    """Accuracy of one sample per row at T = 1, graded by the grader (independent of the build's
    table code: its own sampling seed, engine and grading calls)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tcopd.runtime.data.prompts import render_prompt
    from tcopd.runtime.evaluation.grading import Grader
    from tcopd.runtime.generation.rollout import HFEngine, SamplingParams

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    prompts = [render_prompt(r["prompt"], template="plain") for r in rows]
    ids = tok(prompts, add_special_tokens=False)["input_ids"]
    sampling = SamplingParams(
        n=1, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=max_new_tokens, seed=seed
    )
    completions = HFEngine(model, tok, device="cpu").generate(ids, sampling)
    with Grader(workers=1, timeout_s=10.0) as grader:
        verdicts = grader.grade(
            [r["reward_model"]["ground_truth"] for r in rows], [c.text for c in completions]
        )
    return sum(v is True for v in verdicts) / len(rows)


@pytest.mark.slow
def test_full_multitask_world_shape():
    """The default multi-task world (built here on first use, ~6 minutes on 2 free cores; reused
    after): each teacher ≥ 40 points above the student on its own domain and below the student
    + 10 on the other, from the stored table; then the code cells re-measured with a fresh seed."""
    from tcopd.runtime.data.datasets import load_prepared
    from tcopd.runtime.toy.multitask import ensure_toy_multitask

    t0 = time.time()
    world = ensure_toy_multitask()
    elapsed = time.time() - t0
    table = world.table()
    acc = {
        d: {n: r["accuracy"] for n, r in t["models"].items()} for d, t in table["domains"].items()
    }
    for d, teacher, other in (("math", "math_teacher", "code"), ("code", "code_teacher", "math")):
        assert table["domains"][d]["problems"] >= 200
        assert acc[d][teacher] >= acc[d]["student"] + 0.40, table["checks"]
        assert acc[other][teacher] < acc[other]["student"] + 0.10, table["checks"]
    # The poor teacher is poor in a recognisable style: long on the other domain.
    for d, own, poor in (
        ("code", "code_teacher", "math_teacher"),
        ("math", "math_teacher", "code_teacher"),
    ):
        m = table["domains"][d]["models"]
        assert m[poor]["mean_length"] >= 1.3 * m[own]["mean_length"], d

    rows = load_prepared(world.test_files["code"])
    budget = table["domains"]["code"]["max_new_tokens"]
    fresh = {
        name: _remeasure(world.models[name], rows, seed=1234, max_new_tokens=budget)
        for name in ("student", "code_teacher", "math_teacher")
    }
    se = 0.5 / len(rows) ** 0.5  # the largest binomial standard error at this size
    for name, a in fresh.items():
        assert abs(a - acc["code"][name]) < 4 * 2**0.5 * se, (name, a, acc["code"][name])
    assert fresh["code_teacher"] >= fresh["student"] + 0.40, fresh
    assert fresh["math_teacher"] < fresh["student"] + 0.10, fresh
    # The design target is 6 minutes on 2 free cores; a shared CI box gets some slack.
    assert elapsed < 900, f"multi-task toy build took {elapsed:.0f} s"
    print(
        f"multi-task toy world ready in {elapsed:.0f} s (recorded: {world.build_seconds:.0f} s); "
        f"code accuracy re-measured: {fresh}"
    )

"""The toy world: generators checked against an independent reading of the question text and
math-verify; the tokenizer; a small build (seconds) whose artefacts load with transformers."""

from __future__ import annotations

import hashlib
import random
import re
import time

import pytest

from tcopd.runtime.toy import problems as P

ADD = {"buys", "finds", "gets", "wins", "picks up", "is given"}
SUB = {"gives away", "eats", "loses", "sells", "drops", "uses"}


def _solve_from_text(p: P.Problem) -> int:
    """Answer computed from the question text alone (independent of the generator's fields)."""
    if p.domain == "math":
        sentences = re.split(r"(?<=\.) ", p.question)
        value = int(re.fullmatch(r"\w+ has (\d+) \w+\.", sentences[0]).group(1))
        assert sentences[-1].startswith("How many")
        for s in sentences[1:-1]:
            verb, n = re.fullmatch(r"(?:Then )?\w+ (.+) (\d+)\.", s).groups()
            assert verb in ADD | SUB, verb
            value = value + int(n) if verb in ADD else value - int(n)
        return value
    env: dict[str, int] = {}
    for line in p.question.splitlines()[1:]:
        m = re.fullmatch(r"print\((\w)\)", line)
        if m:
            return env[m.group(1)]
        exec(line, {}, env)  # the program is straight-line integer arithmetic
    raise AssertionError("no print")


def _equations_ok(text: str) -> int:
    eqs = re.findall(r"(\d+) ([+-]) (\d+) = (\d+)", text)
    for a, op, b, c in eqs:
        assert (int(a) + int(b) if op == "+" else int(a) - int(b)) == int(c), text
    return len(eqs)


@pytest.mark.parametrize("domain", ["math", "code"])
def test_generated_answers_match_the_question_text(domain):
    rng = random.Random(1)
    for _ in range(300):
        p = P.make_problem(domain, rng)
        assert p.answer == _solve_from_text(p) >= 0
        assert 2 <= len(p.steps) <= 3


def test_solution_styles_are_arithmetically_correct_and_verify():
    from tcopd.runtime.evaluation.grading import extract_boxed, verify_answer

    rng = random.Random(2)
    for i in range(120):
        p = P.make_problem("math" if i % 2 else "code", rng)
        gold = str(p.answer)
        good, long = P.concise(p), P.verbose(p)
        assert _equations_ok(good) == len(p.steps) == _equations_ok(long)
        assert len(long) > 2 * len(good)
        if i < 20:  # math-verify is slow-ish; the integer compare below covers the rest
            assert verify_answer(gold, extract_boxed(good))
            assert verify_answer(gold, extract_boxed(long))
        assert extract_boxed(good) == gold == extract_boxed(long)
        wrong = P.wrong_ops(p, rng)
        assert wrong != p.ops
        bad = P.concise(p, wrong)
        _equations_ok(bad)  # wrong operation, still right arithmetic
        assert extract_boxed(bad) == str(P.final_value(p, wrong))
        if i < 20 and P.final_value(p, wrong) != p.answer:
            assert not verify_answer(gold, extract_boxed(bad))
        g = P.guess(p, rng)
        assert re.fullmatch(r"\\boxed\{\d+\}", g)
        vg = P.verbose_guess(p, rng)
        assert _equations_ok(vg) == 0 and vg.startswith("Let us restate") and "\\boxed{" in vg


def test_hedged_puts_k_hedging_sentences_before_the_answer():
    rng = random.Random(4)
    seen = set()
    for _ in range(200):
        text = P.hedged("12 + 3 = 15. \\boxed{15}", rng, (1, 2, 3))
        head, _, tail = text.partition(" 12 + 3")
        assert tail == " = 15. \\boxed{15}"
        k, rest = 0, head + " "
        while rest:  # the head is hedges and nothing else
            hedge = next(h for h in P.HEDGES if rest.startswith(h + " "))
            rest, k = rest[len(hedge) + 1 :], k + 1
        assert 1 <= k <= 3
        seen.add(k)
    assert seen == {1, 2, 3}
    assert P.hedged("x", rng, (0,)) == "x"


def test_tokenizer_round_trips_and_has_one_token_per_digit(tmp_path):
    from transformers import AutoTokenizer

    from tcopd.runtime.toy.tokenizer import build_tokenizer

    rng = random.Random(3)
    probs = [P.make_problem(d, rng) for d in ("math", "code") * 50]
    texts = [f"Question: {p.question}\nAnswer: " + P.verbose(p) for p in probs]
    build_tokenizer(texts).save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    for t in texts:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == t
    pieces = tok.convert_ids_to_tokens(
        tok(" 407 + 9 = 416.", add_special_tokens=False)["input_ids"]
    )
    assert pieces == ["▁4", "0", "7", "▁+", "▁9", "▁=", "▁4", "1", "6", "."]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.pad_token_id != tok.eos_token_id


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    from tcopd.runtime.toy import ensure_toy

    root = tmp_path_factory.mktemp("toy") / "world"
    seen = []
    world = ensure_toy(root, seed=5, size="small", progress=seen.append)
    return world, seen


def test_small_build_artefacts_load_with_transformers(small_world):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tcopd.runtime.data.datasets import load_prepared

    world, seen = small_world
    assert {e.phase for e in seen} >= {"data", "student", "expert", "anti_expert", "table"}
    tok = AutoTokenizer.from_pretrained(str(world.tokenizer))
    for name, path in world.models.items():
        model = AutoModelForCausalLM.from_pretrained(str(path))
        assert type(model).__name__ == "Qwen3ForCausalLM", name
        assert model.config.head_dim >= 32 and model.config.tie_word_embeddings
        assert model.config.eos_token_id == tok.eos_token_id
        assert AutoTokenizer.from_pretrained(str(path)).get_vocab() == tok.get_vocab()
        with torch.no_grad():
            logits = model(torch.tensor([[1, 2, 3]])).logits
        assert logits.shape == (1, 3, len(tok))
    test_math = load_prepared(world.test_files["math"])
    test_code = load_prepared(world.test_files["code"])
    train = load_prepared(world.train_file)
    assert {r["domain"] for r in test_math} == {"math"} and {r["domain"] for r in test_code} == {
        "code"
    }
    assert {r["domain"] for r in train} == {"math", "code"}
    assert not {r["prompt"][0]["content"] for r in test_math} & {
        r["prompt"][0]["content"] for r in train
    }
    for r in test_math[:5] + test_code[:5]:
        assert r["reward_model"]["ground_truth"] == str(_solve_from_text_row(r))
    assert world.train_file.with_suffix(".jsonl").is_file()


def _solve_from_text_row(row) -> int:
    q = row["extra_info"]["question"]
    domain = row["domain"]
    return _solve_from_text(P.Problem(domain, q, 0, (), ""))


def test_small_build_table_is_produced(small_world):
    world, _ = small_world
    table = world.table()
    assert set(table["models"]) == {"student", "expert", "anti_expert"}
    assert table["problems"] == len(world_rows(world))
    for r in table["models"].values():
        assert 0.0 <= r["accuracy"] <= 1.0 and 0 < r["mean_length"] <= table["max_new_tokens"]
        assert r["accuracy_se"] >= 0 and r["mean_length_se"] >= 0
    md = world.table_md.read_text()
    assert "| expert |" in md and "accuracy" in md


def world_rows(world):
    from tcopd.runtime.data.datasets import load_prepared

    return load_prepared(world.test_files["math"])


def test_reuse_and_force(small_world):
    from tcopd.runtime.toy import ensure_toy

    world, _ = small_world
    stamp = world.student.joinpath("model.safetensors").stat().st_mtime_ns
    t0 = time.time()
    again = ensure_toy(world.root, seed=5, size="small")
    assert time.time() - t0 < 1.0 and again == world
    assert world.student.joinpath("model.safetensors").stat().st_mtime_ns == stamp


def test_same_seed_same_world_different_seed_different_data(small_world, tmp_path):
    from tcopd.runtime.toy import ensure_toy

    world, _ = small_world
    twin = ensure_toy(tmp_path / "twin", seed=5, size="small", force=True)
    for a, b in [
        (world.train_file, twin.train_file),
        (world.test_files["math"], twin.test_files["math"]),
        (world.student / "model.safetensors", twin.student / "model.safetensors"),
        (world.expert / "model.safetensors", twin.expert / "model.safetensors"),
        (world.anti_expert / "model.safetensors", twin.anti_expert / "model.safetensors"),
        (world.student / "tokenizer.json", twin.student / "tokenizer.json"),
    ]:
        assert _digest(a) == _digest(b), a.name
    from tcopd.runtime.toy.build import SETTINGS, make_corpora

    a, b = make_corpora(5, SETTINGS["small"]), make_corpora(6, SETTINGS["small"])
    assert a["rows"][("test", "math")] != b["rows"][("test", "math")]
    assert a["rows"] == make_corpora(5, SETTINGS["small"])["rows"]
    assert not list(tmp_path.glob(".*build-*")), "temporary build directories left behind"


def test_non_world_directory_is_refused(tmp_path):
    from tcopd.errors import DataError
    from tcopd.runtime.toy import ensure_toy

    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a toy world"):
        ensure_toy(tmp_path, size="small")
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_default_root(monkeypatch, tmp_path):
    from tcopd.runtime.toy import default_root

    monkeypatch.setenv("TCOPD_TOY_DIR", str(tmp_path / "x"))
    assert default_root() == tmp_path / "x"
    monkeypatch.delenv("TCOPD_TOY_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_root() == tmp_path / "cache" / "tcopd" / "toy"


def test_load_benchmark_toy_from_world_dir_or_file(small_world):
    from tcopd.pipelines.benchmarks import load_benchmark
    from tcopd.runtime.data.datasets import load_prepared

    world, _ = small_world
    expected = load_prepared(world.test_files["math"])
    assert load_benchmark("toy", world.root) == expected
    assert load_benchmark("toy", world.test_files["math"]) == expected
    assert load_benchmark("toy-code", world.root) == load_prepared(world.test_files["code"])


def test_toy_models_resolve_to_the_plain_template(small_world):
    """The toy models were trained on plain prompts: no chat template, so `--template auto` is plain."""
    from transformers import AutoTokenizer

    from tcopd.pipelines.eval_problems import resolve_template as _resolve_template

    world, _ = small_world
    for path in (world.student, world.expert, world.anti_expert):
        tok = AutoTokenizer.from_pretrained(path)
        assert not getattr(tok, "chat_template", None)
        assert _resolve_template("auto", tok) == "plain"


def test_two_builds_at_once_build_once_and_both_get_the_world(tmp_path):
    """Two commands on a fresh machine (or two test workers) ask for the same world at once: one
    builds it, the other waits for it and reuses it; nothing is swapped under anyone's feet."""
    import threading

    from tcopd.runtime.toy.build import build_or_reuse

    root, calls, results = tmp_path / "world", [], []

    def build(out):
        calls.append(out)
        time.sleep(0.5)  # long enough for the other thread to arrive while this one builds
        (out / "toy.json").write_text('{"seed": 0}')
        return {"seed": 0}

    def ask():
        results.append(build_or_reuse(root, {"seed": 0}, build))

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results == [{"seed": 0}, {"seed": 0}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]  # no lock or temp left here

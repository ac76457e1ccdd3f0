"""``tcopd analyze`` pipelines on small hand-made samples and metrics files with known answers.

Expected numbers are worked by hand in the comments (and quantiles cross-checked against numpy).
"""

from __future__ import annotations

import csv
import io
import json
import random

import numpy as np
import pytest
import yaml

from tcopd.errors import ConfigError, DataError
from tcopd.pipelines.analyze import cost, curves, length, phrases
from tcopd.pipelines.analyze.sources import has_boxed, load_run
from tcopd.pipelines.analyze.tables import (
    Row,
    Table,
    render,
    resolve_format,
    to_csv,
    to_json,
    unique_names,
)


def write_samples(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    base = {"problem_id": "p", "sample_index": 0, "prompt": "q", "gold": "3", "extracted": None}
    path.write_text("".join(json.dumps({**base, **r}) + "\n" for r in rows))
    return path


def sample(tokens, correct, finish="stop", response="\\boxed{3}"):
    return {"num_tokens": tokens, "correct": correct, "finish_reason": finish, "response": response}


# File A: tokens 10, 20, 30, 40, 100 (sorted already).
#   mean = 200/5 = 40; median = 30; p90: position 0.9·4 = 3.6 → 40 + 0.6·(100 − 40) = 76; max 100
#   correct = {10, 30} → 20; incorrect = {20, 100} → 60; ungraded 1 (the 40)
#   truncated: 2 of 5 = 0.4; no box: "no answer", "\boxed{4" (cut), "\boxed{1} … \boxed{2" → 3/5
A_ROWS = [
    sample(10, True, response="so \\boxed{3}"),
    sample(20, False, response="no answer"),
    sample(30, True, "length", "\\boxed{4"),
    sample(40, None, response="\\boxed{1} then \\boxed{2"),
    sample(100, False, "length", "\\boxed{\\frac{1}{2}}"),
]
# File B: tokens 7, 8, both correct: mean 7.5, median 7.5, p90 7 + 0.9·1 = 7.9, incorrect: none
B_ROWS = [sample(8, True), sample(7, True)]


@pytest.fixture
def two_files(tmp_path):
    a = write_samples(tmp_path / "anti_expert" / "samples.jsonl", A_ROWS)
    b = write_samples(tmp_path / "tcopd" / "samples.jsonl", B_ROWS)
    return a, b


def test_length_hand_worked(two_files):
    a, b = two_files
    t = length.run(length.LengthConfig(samples=[str(a), str(b)])).table
    assert t.columns == ("anti_expert", "tcopd")
    expect_a = {
        "samples": 5,
        "mean tokens": 40.0,
        "median tokens": 30.0,
        "p90 tokens": 76.0,
        "max tokens": 100,
        "mean tokens (correct)": 20.0,
        "mean tokens (incorrect)": 60.0,
        "ungraded": 1,
        "truncated fraction": 0.4,
        "no-box fraction": 0.6,
    }
    expect_b = {
        "samples": 2,
        "mean tokens": 7.5,
        "median tokens": 7.5,
        "p90 tokens": 7.9,
        "max tokens": 8,
    }
    expect_b |= {"mean tokens (correct)": 7.5, "mean tokens (incorrect)": None, "ungraded": 0}
    expect_b |= {"truncated fraction": 0.0, "no-box fraction": 0.0}
    for label, want in expect_a.items():
        assert t.value(label, "anti_expert") == pytest.approx(want, abs=1e-12), label
    for label, want in expect_b.items():
        got = t.value(label, "tcopd")
        assert got == want if want is None else got == pytest.approx(want, abs=1e-12), label


def test_quantile_matches_numpy_default():
    rng = random.Random(0)
    for n in (1, 2, 3, 10, 57):
        xs = [rng.randint(0, 5000) for _ in range(n)]
        for q in (0.5, 0.9, 0.0, 1.0):
            assert length.quantile(xs, q) == pytest.approx(
                float(np.percentile(xs, 100 * q)), rel=1e-12
            )
    assert length.quantile([], 0.5) is None


def test_has_boxed_follows_the_grader():
    assert has_boxed("x \\boxed{\\frac{1}{2}}")
    assert not has_boxed("x \\boxed{12")  # truncated inside the box
    assert not has_boxed("\\boxed{1} and later \\boxed{2")  # the last box counts, as in grading
    assert not has_boxed("the answer is 3")


def test_length_retokenises_with_a_tokenizer(tmp_path):
    from helpers_tiny import make_tokenizer

    tok = make_tokenizer(tmp_path)
    # num_tokens is missing (and would be wrong anyway): whitespace words of the word-level tokenizer
    rows = [
        {"response": "the answer is 4", "correct": True, "finish_reason": "stop"},  # 4 tokens
        {
            "response": "so x = 1 + 2",
            "correct": False,
            "finish_reason": "stop",
            "num_tokens": 99,
        },  # 6
    ]
    f = write_samples(tmp_path / "run" / "samples.jsonl", rows)
    t = length.run(length.LengthConfig(samples=[str(f)], tokenizer=str(tok))).table
    assert t.value("mean tokens", "run") == pytest.approx(5.0)
    assert t.value("max tokens", "run") == 6
    with pytest.raises(
        DataError, match=r"samples.jsonl:1: missing field 'num_tokens'.*--tokenizer"
    ):
        length.run(length.LengthConfig(samples=[str(f)]))


def test_phrase_rates_hand_worked(tmp_path):
    text = (
        "Let's see. LET’S go. lets not. Wait, we should wait; awaited. "
        "Step 1: step 12. STEP  1 again. Define x; redefine y; defined z."
    )
    # let's: "Let's", "LET’S" (not "lets") = 2; wait: "Wait", "wait" (not "awaited") = 2, plus 2 below
    # we should: 1; step 1: "Step 1", "STEP  1" (not "step 12") = 2; define: "Define" only = 1
    # "x": "x" in "Define x" = 1. Total tokens 40 + 10 = 50 → rate = count / 50 · 1000 = 20·count
    f = write_samples(
        tmp_path / "r" / "samples.jsonl",
        [sample(40, True, response=text), sample(10, None, response="wait WAIT")],
    )
    t = phrases.run(phrases.PhrasesConfig(samples=[str(f)], phrases=["x", "WAIT"])).table
    assert [r.label for r in t.rows] == [
        "(total tokens)",
        "let's",
        "we should",
        "step 1",
        "wait",
        "define",
        "x",
    ]
    expect = {
        "(total tokens)": 50,
        "let's": 40.0,
        "we should": 20.0,
        "step 1": 40.0,
        "wait": 80.0,
        "define": 20.0,
        "x": 20.0,
    }
    for label, want in expect.items():
        assert t.value(label, "r") == pytest.approx(want, abs=1e-12), label


def test_phrases_only_given(tmp_path):
    f = write_samples(tmp_path / "r" / "samples.jsonl", [sample(4, True, response="a+b a+b")])
    t = phrases.run(
        phrases.PhrasesConfig(samples=[str(f)], phrases=["a+b"], default_phrases=False)
    ).table
    assert [r.label for r in t.rows] == ["(total tokens)", "a+b"]
    assert t.value("a+b", "r") == pytest.approx(500.0)  # regex characters are literal: 2 / 4 · 1000
    with pytest.raises(ConfigError, match="no phrases"):
        phrases.run(phrases.PhrasesConfig(samples=[str(f)], default_phrases=False))


# ------------------------------------------------------------------------------------------- runs


def write_run(d, rows, config=None):
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if config is not None:
        (d / "config.yaml").write_text(yaml.safe_dump(config))
    return d


def acc_rows(values, **extra):
    return [
        {"step": i + 1, "rollout_accuracy": v, "loss": 0.1, **extra} for i, v in enumerate(values)
    ]


@pytest.fixture
def curve_runs(tmp_path):
    a = write_run(tmp_path / "gopd", acc_rows([0.1, 0.3, 0.5, 0.6]))
    rows_b = acc_rows([0.2, 0.6, 0.55, 0.8])
    rows_b[1]["eval_mean_at_n"] = 0.25  # eval metric only on some steps
    # step 2 logged twice (a resumed run): the earlier row (0.0) loses to the later one (0.6)
    rows_b.insert(1, {"step": 2, "rollout_accuracy": 0.0})
    b = write_run(tmp_path / "tcopd", rows_b)
    return a, b


def assert_png(path):
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] > 100 and im.size[1] > 100
    import matplotlib.image

    assert matplotlib.image.imread(str(path)).ndim == 3


def test_curves_target_and_plot(curve_runs, tmp_path):
    a, b = curve_runs
    out = tmp_path / "figs" / "fig2.png"
    res = curves.run(curves.CurvesConfig(runs=[str(a), str(b)], out=str(out)))
    assert res.series["tcopd"] == ([1, 2, 3, 4], [0.2, 0.6, 0.55, 0.8])
    # default target: min(max A = 0.6, max B = 0.8) = 0.6; A reaches it at 4, B at 2
    assert res.target == 0.6
    assert res.table.value("first step ≥ target", "gopd") == 4
    assert res.table.value("first step ≥ target", "tcopd") == 2
    assert res.table.value("final value", "tcopd") == 0.8
    assert res.png == out and res.svg == out.with_suffix(".svg")
    assert_png(out)
    svg = res.svg.read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert not list(out.parent.glob("*.tmp"))  # written atomically, nothing left over


def test_curves_smoothing_and_given_target(curve_runs, tmp_path):
    a, b = curve_runs
    # window 2: A → 0.1, 0.2, 0.4, 0.55; B → 0.2, 0.4, 0.575, 0.675; default target min(0.55, 0.675)
    res = curves.run(
        curves.CurvesConfig(runs=[str(a), str(b)], out=str(tmp_path / "s.png"), smooth=2)
    )
    assert res.series["gopd"][1] == pytest.approx([0.1, 0.2, 0.4, 0.55])
    assert res.series["tcopd"][1] == pytest.approx([0.2, 0.4, 0.575, 0.675])
    assert res.target == pytest.approx(0.55)
    assert res.table.value("first step ≥ target", "gopd") == 4
    assert res.table.value("first step ≥ target", "tcopd") == 3
    res = curves.run(
        curves.CurvesConfig(runs=[str(a), str(b)], out=str(tmp_path / "t.png"), target=0.7)
    )
    assert res.table.value("first step ≥ target", "gopd") is None  # never reaches 0.7
    assert res.table.value("first step ≥ target", "tcopd") == 4
    assert "gopd: never reaches 0.7" in res.summary


def test_curves_sparse_metric_and_errors(curve_runs, tmp_path):
    a, b = curve_runs
    res = curves.run(
        curves.CurvesConfig(runs=[str(b)], metric="eval_mean_at_n", out=str(tmp_path / "e"))
    )
    assert res.series["tcopd"] == ([2], [0.25]) and res.png.suffix == ".png"
    with pytest.raises(
        ConfigError,
        match=r"unknown metric 'acc'; the runs log: eval_mean_at_n, loss, rollout_accuracy",
    ):
        curves.run(
            curves.CurvesConfig(runs=[str(a), str(b)], metric="acc", out=str(tmp_path / "x.png"))
        )
    with pytest.raises(DataError, match=r"gopd/metrics.jsonl has no 'eval_mean_at_n' values"):
        curves.run(
            curves.CurvesConfig(
                runs=[str(a), str(b)], metric="eval_mean_at_n", out=str(tmp_path / "x.png")
            )
        )
    with pytest.raises(ConfigError, match=r"--out must be a .png"):
        curves.run(curves.CurvesConfig(runs=[str(a)], out=str(tmp_path / "x.svg")))


def test_metrics_torn_last_line_is_skipped_not_truncated(tmp_path):
    d = write_run(tmp_path / "live", acc_rows([0.5, 0.7]))
    with open(d / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "rollout_acc')  # a row being appended right now
    size = (d / "metrics.jsonl").stat().st_size
    assert [row["step"] for _, row in load_run(d).metrics] == [1, 2]
    assert (d / "metrics.jsonl").stat().st_size == size
    (d / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(DataError, match=r"metrics.jsonl:2: malformed JSON"):
        load_run(d)


# Run "tcopd": 3 steps, time_step_s 10 + 20 + 30 = 60 s → wall hours 60/3600; world_size 4 → ×4
#   rollout 5+10+15 = 30 → 50 %; scoring 2+4+6 = 12 → 20 %; update 6 → 10 %; sync 3 → 5 %; other 15 %
#   peak: cuda:0 max(10, 15) = 15, cuda:1 max(12, 11) = 12 (third row has none); tokens/s (100+200)/2
# Run "gopd": 1 step of 7200 s on one reporting device "cpu" (no world_size) → 2 h, 2 device-h
COST_TCOPD = [
    {"step": 1, "time_rollout_s": 5, "time_scoring_s": 2, "time_update_s": 1, "time_sync_s": 1, "time_step_s": 10,
     "tokens_per_s": 100.0, "peak_mem_gb": {"cuda:0": 10.0, "cuda:1": 12.0}},
    {"step": 2, "time_rollout_s": 10, "time_scoring_s": 4, "time_update_s": 2, "time_sync_s": 1, "time_step_s": 20,
     "tokens_per_s": 200.0, "peak_mem_gb": {"cuda:0": 15.0, "cuda:1": 11.0}},
    {"step": 3, "time_rollout_s": 15, "time_scoring_s": 6, "time_update_s": 3, "time_sync_s": 1, "time_step_s": 30},
]  # fmt: skip
TEACHERS = [
    {"name": "expert", "path": "/m/math", "lam": 1.5},
    {"name": "anti_expert", "path": "/m/code", "lam": -0.5},
    {"name": "spare", "path": "/m/x", "lam": 0.0},
]


def test_cost_hand_worked(tmp_path):
    a = write_run(
        tmp_path / "tcopd", COST_TCOPD, {"teachers": TEACHERS, "world_size": 4, "device": "cuda"}
    )
    row = {
        "step": 1,
        "time_rollout_s": 3600,
        "time_scoring_s": 1800,
        "time_update_s": 1800,
        "time_sync_s": 0,
    }
    b = write_run(
        tmp_path / "gopd",
        [{**row, "time_step_s": 7200, "peak_mem_gb": {"cpu": 2.5}}],
        {"teachers": TEACHERS[:1]},
    )
    t = cost.run(cost.CostConfig(runs=[str(a), str(b)])).table
    assert t.value("teachers", "tcopd") == "expert λ=1.5, anti_expert λ=-0.5, spare λ=0"
    assert t.value("# teachers", "tcopd") == 2 and t.value("# teachers", "gopd") == 1
    want = {
        "steps": 3,
        "devices": 4,
        "wall hours": 60 / 3600,
        "device hours": 4 * 60 / 3600,
        "rollout %": 50.0,
    }
    want |= {
        "scoring %": 20.0,
        "update %": 10.0,
        "sync %": 5.0,
        "other %": 15.0,
        "tokens/s mean": 150.0,
    }
    want |= {
        "peak mem max (GB)": 15.0,
        "peak mem cuda:0 (GB)": 15.0,
        "peak mem cuda:1 (GB)": 12.0,
        "device": "cuda",
    }
    for label, v in want.items():
        assert t.value(label, "tcopd") == (
            v if isinstance(v, str) else pytest.approx(v, rel=1e-12)
        ), label
    want = {
        "wall hours": 2.0,
        "devices": 1,
        "device hours": 2.0,
        "rollout %": 50.0,
        "sync %": 0.0,
        "other %": 0.0,
    }
    want |= {
        "tokens/s mean": None,
        "peak mem cuda:0 (GB)": None,
        "peak mem cpu (GB)": 2.5,
        "device": None,
    }
    for label, v in want.items():
        assert t.value(label, "gopd") == (v if v is None else pytest.approx(v, rel=1e-12)), label


# A one-step-off run (--max-staleness 1), 3 steps, by hand:
#   step 1 (its own batch): rollout 4, scoring 2, update 3, sync 1, step 10; trainer idle 4
#     (it waited for its rollout), engine idle 3 (busy 4 + 3 ahead of 10)
#   steps 2, 3 (batch generated ahead): rollout 6 (overlapped), scoring 2, update 3, sync 1,
#     step 7; trainer idle 1, engine idle 1 (step 3: 7, nothing left to generate ahead)
#   ideal = mean(max(4, 5) + 1, max(6, 5) + 1, max(6, 5) + 1) = 20/3; measured 24/3 = 8
#   other % = 100·(24 − (4 + 1 + 1) − 6 − 9 − 3)/24 = 0; engine idle 100·11/24; trainer 100·6/24
COST_AHEAD = [
    {"step": 1, "time_rollout_s": 4, "time_scoring_s": 2, "time_update_s": 3, "time_sync_s": 1,
     "time_step_s": 10, "time_trainer_idle_s": 4, "time_engine_idle_s": 3, "staleness": 0},
    {"step": 2, "time_rollout_s": 6, "time_scoring_s": 2, "time_update_s": 3, "time_sync_s": 1,
     "time_step_s": 7, "time_trainer_idle_s": 1, "time_engine_idle_s": 1, "staleness": 1},
    {"step": 3, "time_rollout_s": 6, "time_scoring_s": 2, "time_update_s": 3, "time_sync_s": 1,
     "time_step_s": 7, "time_trainer_idle_s": 1, "time_engine_idle_s": 7, "staleness": 1},
]  # fmt: skip


def test_cost_shows_the_overlap(tmp_path):
    a = write_run(tmp_path / "ahead", COST_AHEAD, {"teachers": TEACHERS[:1]})
    b = write_run(tmp_path / "sync", COST_TCOPD, {"teachers": TEACHERS[:1]})
    t = cost.run(cost.CostConfig(runs=[str(a), str(b)])).table
    want = {
        "step s (measured)": 8.0,
        "step s (ideal, one step off)": 20 / 3,
        "other %": 0.0,
        "engine idle %": 100 * 11 / 24,
        "trainer idle %": 100 * 6 / 24,
        "staleness max": 1,
    }
    for label, v in want.items():
        assert t.value(label, "ahead") == pytest.approx(v, rel=1e-12), label
    # a synchronous run logged before the idle fields: ideal = mean(max(5, 3) + 1,
    # max(10, 6) + 1, max(15, 9) + 1) = 11; the idle shares and staleness are empty
    assert t.value("step s (ideal, one step off)", "sync") == pytest.approx(11.0, rel=1e-12)
    assert t.value("step s (measured)", "sync") == pytest.approx(20.0, rel=1e-12)
    for label in ("engine idle %", "trainer idle %", "staleness max"):
        assert t.value(label, "sync") is None, label


def test_cost_errors(tmp_path):
    bad = [{**COST_TCOPD[0]}, {k: v for k, v in COST_TCOPD[1].items() if k != "time_sync_s"}]
    d = write_run(tmp_path / "r", bad, {"teachers": TEACHERS})
    with pytest.raises(DataError, match=r"r/metrics.jsonl:2: field 'time_sync_s' is missing"):
        cost.run(cost.CostConfig(runs=[str(d)]))
    d2 = write_run(tmp_path / "noconf", COST_TCOPD)
    with pytest.raises(DataError, match=r"noconf/config.yaml does not exist"):
        cost.run(cost.CostConfig(runs=[str(d2)]))
    with pytest.raises(DataError, match=r"run directory '.*nowhere' does not exist"):
        cost.run(cost.CostConfig(runs=[str(tmp_path / "nowhere")]))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    with pytest.raises(DataError, match=r"empty/metrics.jsonl is empty"):
        cost.run(cost.CostConfig(runs=[str(tmp_path / "empty")]))


# ----------------------------------------------------------------------------------- bad samples


def test_samples_errors_name_file_and_line(tmp_path):
    with pytest.raises(DataError, match=r"samples file '.*missing.jsonl' does not exist"):
        length.run(length.LengthConfig(samples=[str(tmp_path / "missing.jsonl")]))
    empty = tmp_path / "e" / "samples.jsonl"
    empty.parent.mkdir()
    empty.write_text("\n")
    with pytest.raises(DataError, match=r"is empty"):
        length.run(length.LengthConfig(samples=[str(empty)]))
    rows = [sample(3, True), {"num_tokens": 3, "correct": True, "response": "x"}]
    f = write_samples(tmp_path / "m" / "samples.jsonl", rows)
    with pytest.raises(DataError, match=r"m/samples.jsonl:2: missing field 'finish_reason'"):
        length.run(length.LengthConfig(samples=[str(f)]))
    phrases.run(phrases.PhrasesConfig(samples=[str(f)]))  # phrases do not need finish_reason
    f = write_samples(tmp_path / "t" / "samples.jsonl", [sample("12", True)])
    with pytest.raises(
        DataError, match=r"t/samples.jsonl:1: field 'num_tokens' must be int, got '12'"
    ):
        length.run(length.LengthConfig(samples=[str(f)]))
    f = write_samples(tmp_path / "c" / "samples.jsonl", [sample(1, "yes")])
    with pytest.raises(DataError, match=r"c/samples.jsonl:1: field 'correct' must be bool or null"):
        length.run(length.LengthConfig(samples=[str(f)]))


def test_names(tmp_path, two_files):
    a, b = two_files
    with pytest.raises(ConfigError, match="got 1 --name for 2 inputs"):
        length.run(length.LengthConfig(samples=[str(a), str(b)], names=["x"]))
    t = length.run(length.LengthConfig(samples=[str(a), str(b)], names=["Anti", "TC"])).table
    assert t.columns == ("Anti", "TC")
    paths = [tmp_path / "x" / "eval" / "samples.jsonl", tmp_path / "y" / "eval" / "samples.jsonl"]
    assert unique_names(paths, None, "file") == ["x/eval", "y/eval"]
    same = [tmp_path / "x" / "a.jsonl", tmp_path / "x" / "b.jsonl"]
    assert unique_names(same, None, "file") == ["x/a", "x/b"]


# -------------------------------------------------------------------------------- table formats


def test_csv_and_json_parse_back_to_the_same_numbers(two_files):
    t = length.run(length.LengthConfig(samples=[str(x) for x in two_files])).table
    rows = list(csv.reader(io.StringIO(to_csv(t))))
    assert rows[0] == ["statistic", "anti_expert", "tcopd"]
    for r, line in zip(t.rows, rows[1:], strict=True):
        assert line[0] == r.label
        for v, cell in zip(r.values, line[1:], strict=True):
            assert (cell == "") if v is None else float(cell) == v
    obj = json.loads(to_json(t))
    assert obj["columns"] == ["anti_expert", "tcopd"] and obj["row_header"] == "statistic"
    for r, rec in zip(t.rows, obj["rows"], strict=True):
        assert rec == {"statistic": r.label, "anti_expert": r.values[0], "tcopd": r.values[1]}


def test_text_table_and_format_choice():
    t = Table("T", ("a", "b"), (Row("x", (1.23456, None), ".2f"), Row("n", (3, 4), "d")))
    text = render(t, "table")
    assert text.splitlines()[0] == "T"
    assert text.splitlines()[3].split() == ["x", "1.23", "—"]
    assert json.loads(render(t, "json"))["rows"][0] == {"statistic": "x", "a": 1.23456, "b": None}
    assert resolve_format(None, "t.csv") == "csv" and resolve_format(None, "t.json") == "json"
    assert resolve_format(None, None) == "table" and resolve_format("json", "t.csv") == "json"
    with pytest.raises(ConfigError, match="unknown --format 'xml'"):
        resolve_format("xml", None)


# ------------------------------------------------------------------------------ sweep directories


def write_sweep(root, runs):
    """A `tcopd sweep` directory by hand: ``runs[(setting, seed)] = (status, metrics rows or None,
    samples rows or None)``; settings ``lambdas=1`` and ``lambdas=1.5,-0.5``, seeds 0 and 1."""
    settings = [
        {"name": "lambdas=1", "dir": "lambdas=1", "values": {"lambdas": "1"}},
        {"name": "lambdas=1.5,-0.5", "dir": "lambdas=1.5,-0.5", "values": {"lambdas": "1.5,-0.5"}},
    ]
    root.mkdir(parents=True)
    (root / "sweep_config.yaml").write_text(yaml.safe_dump({"settings": settings, "seeds": [0, 1]}))
    state = {}
    for (setting, seed), (status, metrics, samples) in runs.items():
        run = root / "runs" / setting / f"seed{seed}"
        state[f"{setting}/seed{seed}"] = {"status": status}
        if metrics is not None:
            lam = [float(x) for x in setting.split("=")[1].split(",")]
            teachers = [
                {"name": n, "path": "/m", "lam": v} for n, v in zip(("expert", "anti_expert"), lam)
            ]
            write_run(run / "train", metrics, {"teachers": teachers})
        if samples is not None:
            write_samples(run / "eval" / "samples.jsonl", samples)
    (root / "sweep_state.json").write_text(json.dumps({"runs": state}))
    return root


def step_rows(acc, step_s):
    """Metrics rows with rollout accuracies ``acc`` and every phase 1/4 of ``step_s`` seconds."""
    t = {f"time_{p}_s": step_s / 4 for p in ("rollout", "scoring", "update", "sync")}
    return [
        {"step": i + 1, "rollout_accuracy": a, "time_step_s": step_s, **t}
        for i, a in enumerate(acc)
    ]


@pytest.fixture
def sweep_dir(tmp_path):
    # lambdas=1: seed 0 done (tokens 10, 20, "wait wait"), seed 1 done (30, "wait");
    # lambdas=1.5,-0.5: seed 0 done (8), seed 1 failed after writing samples (1000: left out);
    # its train dir has a metrics.jsonl with no complete row (a run not past its first step)
    return write_sweep(
        tmp_path / "sw",
        {
            ("lambdas=1", 0): (
                "done",
                step_rows([0.1, 0.3], 36),
                [sample(10, True, response="wait wait"), sample(20, False, "length", "x")],
            ),
            ("lambdas=1", 1): ("done", step_rows([0.2, 0.4, 0.5], 72), [sample(30, None, response="wait")]),
            ("lambdas=1.5,-0.5", 0): ("done", step_rows([0.6], 3600), [sample(8, True)]),
            ("lambdas=1.5,-0.5", 1): ("failed", [], [sample(1000, True)]),
        },
    )  # fmt: skip


def test_length_and_phrases_pool_a_sweep_setting_over_its_finished_seeds(sweep_dir, two_files):
    t = length.run(length.LengthConfig(samples=[str(two_files[1]), str(sweep_dir)])).table
    assert t.columns == ("tcopd", "lambdas=1", "lambdas=1.5,-0.5")
    # lambdas=1 pools 10, 20, 30: mean 20, median 20, p90 at 1.8 → 20 + 0.8·10 = 28, max 30;
    # correct {10} → 10, incorrect {20} → 20, the 30 is ungraded; one of three truncated
    for label, want in [
        ("samples", 3),
        ("mean tokens", 20.0),
        ("median tokens", 20.0),
        ("max tokens", 30),
        ("mean tokens (correct)", 10.0),
        ("mean tokens (incorrect)", 20.0),
        ("ungraded", 1),
    ]:
        assert t.value(label, "lambdas=1") == want, label
    assert t.value("p90 tokens", "lambdas=1") == pytest.approx(28.0)
    assert t.value("truncated fraction", "lambdas=1") == pytest.approx(1 / 3)
    # lambdas=1.5,-0.5: only the finished seed 0 (the failed seed's 1000 is left out)
    assert t.value("samples", "lambdas=1.5,-0.5") == 1
    assert t.value("max tokens", "lambdas=1.5,-0.5") == 8
    assert t.value("mean tokens", "tcopd") == 7.5  # the plain file as before
    # phrases: "wait" 3 times in 10 + 20 + 30 = 60 tokens → 1000 · 3 / 60 = 50 per 1,000
    p = phrases.run(phrases.PhrasesConfig(samples=[str(sweep_dir)])).table
    assert p.value("(total tokens)", "lambdas=1") == 60
    assert p.value("wait", "lambdas=1") == pytest.approx(50.0)
    assert p.value("wait", "lambdas=1.5,-0.5") == 0.0


def test_a_sweep_setting_with_no_finished_run_is_an_empty_column(tmp_path):
    d = write_sweep(
        tmp_path / "sw",
        {("lambdas=1", 0): ("done", None, [sample(5, True)]), ("lambdas=1", 1): ("pending", None, None)},
    )  # fmt: skip
    t = length.run(length.LengthConfig(samples=[str(d)])).table
    assert t.columns == ("lambdas=1", "lambdas=1.5,-0.5")
    assert t.value("samples", "lambdas=1.5,-0.5") == 0
    assert t.value("mean tokens", "lambdas=1.5,-0.5") is None
    none_done = write_sweep(tmp_path / "sw2", {("lambdas=1", 0): ("trained", None, None)})
    with pytest.raises(DataError, match="has no finished evaluation yet"):
        length.run(length.LengthConfig(samples=[str(none_done)]))
    with pytest.raises(DataError, match="has no run with a logged step yet"):
        curves.run(curves.CurvesConfig(runs=[str(none_done)], out=str(tmp_path / "c.png")))


def test_curves_and_cost_take_every_run_of_a_sweep(sweep_dir, tmp_path):
    res = curves.run(curves.CurvesConfig(runs=[str(sweep_dir)], out=str(tmp_path / "c.png")))
    # seed-major; the failed run has no logged step, so no series
    names = ("lambdas=1 seed0", "lambdas=1.5,-0.5 seed0", "lambdas=1 seed1")
    assert res.table.columns == names
    assert [res.table.value("final value", n) for n in names] == [0.3, 0.6, 0.5]
    # default target: min over runs of their best value = min(0.3, 0.6, 0.5) = 0.3
    assert res.target == 0.3
    assert [res.table.value("first step ≥ target", n) for n in names] == [2, 1, 2]
    t = cost.run(cost.CostConfig(runs=[str(sweep_dir)])).table
    assert t.columns == names
    # wall hours: 2 · 36 s = 0.02 h; 1 · 3600 s = 1 h; 3 · 72 s = 0.06 h; each phase 25 %
    assert [t.value("wall hours", n) for n in names] == pytest.approx([0.02, 1.0, 0.06])
    assert t.value("rollout %", names[0]) == pytest.approx(25.0)
    assert t.value("teachers", names[1]) == "expert λ=1.5, anti_expert λ=-0.5"
    assert t.value("# teachers", names[0]) == 1


def test_sweep_column_names(sweep_dir, tmp_path, two_files):
    import shutil

    other = shutil.copytree(sweep_dir, tmp_path / "other")
    t = length.run(length.LengthConfig(samples=[str(sweep_dir), str(other)])).table
    assert t.columns == (
        "sw/lambdas=1",
        "sw/lambdas=1.5,-0.5",
        "other/lambdas=1",
        "other/lambdas=1.5,-0.5",
    )
    with pytest.raises(ConfigError, match="got 1 --name for 3 columns"):
        length.run(length.LengthConfig(samples=[str(two_files[0]), str(sweep_dir)], names=["x"]))
    names = ["anti", "OPD", "TC-OPD"]  # one per column, the sweep's in its settings' order
    t = length.run(length.LengthConfig(samples=[str(two_files[0]), str(sweep_dir)], names=names))
    assert t.table.columns == tuple(names) and t.table.value("samples", "OPD") == 3
    # a directory that is neither a run nor a sweep: the run-directory error as before
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="is '.*plain' a `tcopd train` run directory"):
        curves.run(curves.CurvesConfig(runs=[str(tmp_path / "plain")], out=str(tmp_path / "c.png")))

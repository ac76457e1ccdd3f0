"""`tcopd eval --from-samples` with unequal samples per problem: every sample counts.

The fixture: problem A has 8 samples (3 correct), B 16 (all correct), C 3 (none correct) —
27 samples. The expected numbers are computed here by hand, independently of core.metrics.
"""

from __future__ import annotations

import json
import math
import statistics

import pytest

from tcopd.cli.main import main
from tcopd.pipelines.eval import EvalConfig, run
from tcopd.progress import Event

# problem id -> (samples, indices of the correct ones)
FIXTURE = {"A": (8, {1, 4, 6}), "B": (16, set(range(16))), "C": (3, set())}


def write_samples(path) -> None:
    rows = []
    for pid, (n, correct) in FIXTURE.items():
        for s in range(n):
            answer = "5" if s in correct else "4"
            rows.append(
                {
                    "problem_id": pid,
                    "sample_index": s,
                    "response": f"so \\boxed{{{answer}}}",
                    "gold": "5",
                    "num_tokens": 10 + s,
                    "finish_reason": "length" if s == 0 else "stop",
                }
            )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def hand_numbers() -> dict:
    """mean@n, stderr and pass@k in %, from (n_p, c_p) with plain Python and math.comb."""
    nc = [(n, len(correct)) for n, correct in FIXTURE.values()]
    acc = [c / n for n, c in nc]  # 3/8, 1, 0
    smallest = min(n for n, _ in nc)
    pass_k = {
        k: 100 * sum(1 - math.comb(n - c, k) / math.comb(n, k) for n, c in nc) / len(nc)
        for k in (1, 2, smallest)
    }
    return {
        "mean": 100 * sum(acc) / len(acc),
        "stderr": 100 * statistics.stdev(acc) / math.sqrt(len(acc)),
        "pass": pass_k,
    }


def test_hand_numbers_are_what_we_think():
    h = hand_numbers()
    assert h["mean"] == pytest.approx(100 * (3 / 8 + 1 + 0) / 3)  # 45.83
    assert h["pass"][3] == pytest.approx(100 * ((1 - 10 / 56) + 1 + 0) / 3)  # 60.71


def test_unequal_n_uses_every_sample(tmp_path):
    src = tmp_path / "graded.jsonl"
    write_samples(src)
    events: list[Event] = []
    res = run(EvalConfig(from_samples=str(src), out=str(tmp_path / "re")), events.append)
    s = res.runs[0].summary
    h = hand_numbers()

    assert s["samples"] == 8 + 16 + 3 and s["problems"] == 3
    assert (s["n_min"], s["n_max"], s["n"]) == (3, 16, None)
    assert s["mean_at_n"] == pytest.approx(h["mean"])
    assert s["stderr"] == pytest.approx(h["stderr"])
    assert s["pass_at_k"] == {str(k): pytest.approx(v) for k, v in h["pass"].items()}
    assert s["mean_tokens"] == pytest.approx(
        sum(10 + s for n, _ in FIXTURE.values() for s in range(n)) / 27
    )
    assert s["truncated_fraction"] == pytest.approx(3 / 27)
    assert len((tmp_path / "re" / "samples.jsonl").read_text().splitlines()) == 27
    assert json.loads((tmp_path / "re" / "summary.json").read_text())["samples"] == 27

    warnings = [e.detail for e in events if e.phase == "warning"]
    assert warnings == [
        "samples per problem vary from 3 to 16: mean@n uses every sample "
        "(each problem's own mean); pass@k reported for k ≤ 3"
    ]
    # no model is known: the run is named by its source file, never "None"
    assert res.runs[0].model == str(src) and s["regraded_from"] == str(src)


def test_equal_n_keeps_n_and_warns_nothing(tmp_path):
    src = tmp_path / "s.jsonl"
    src.write_text(
        "".join(
            json.dumps({"problem_id": p, "sample_index": i, "response": "\\boxed{1}", "gold": g})
            + "\n"
            for p, g in (("a", "1"), ("b", "2"))
            for i in range(2)
        )
    )
    events: list[Event] = []
    s = run(EvalConfig(from_samples=str(src), out=str(tmp_path / "o")), events.append).runs[0]
    assert (s.summary["n"], s.summary["n_min"], s.summary["n_max"]) == (2, 2, 2)
    assert s.summary["mean_at_n"] == pytest.approx(50.0)
    assert not [e for e in events if e.phase == "warning"]
    assert events[0] == Event("eval", 0, 4, detail="re-grade")
    assert [e.done for e in events if e.phase == "graded"] == [1, 2, 3, 4]


def test_duplicate_sample_is_an_error_not_a_silent_drop(tmp_path):
    src = tmp_path / "dup.jsonl"
    row = {"problem_id": "a", "sample_index": 0, "response": "\\boxed{1}", "gold": "1"}
    src.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(Exception, match=r"dup\.jsonl:2: .*'a' sample_index 0.*line 1"):
        run(EvalConfig(from_samples=str(src), out=str(tmp_path / "o")))


def test_cli_warns_once_and_names_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_samples(tmp_path / "graded.jsonl")
    with pytest.raises(SystemExit) as e:
        main(["eval", "--from-samples", "graded.jsonl", "--out", "re"])
    assert e.value.code == 0
    captured = capsys.readouterr()
    err = " ".join(captured.err.split())
    assert err.count("samples per problem vary from 3 to 16") == 1
    assert "None" not in captured.out
    table_rows = [line for line in captured.out.splitlines() if "graded.jsonl" in line]
    assert table_rows and f"{hand_numbers()['mean']:.2f}" in table_rows[0]
    assert "mean@n" in captured.out and "pass@3" in captured.out

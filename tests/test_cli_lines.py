"""Progress as plain lines when the output is piped (no terminal): what `make demo | tee` shows."""

from __future__ import annotations

import io

from rich.console import Console

from tcopd.cli.lines import LineReporter
from tcopd.progress import Event


def _reporter() -> tuple[LineReporter, io.StringIO]:
    buf = io.StringIO()
    return LineReporter(Console(file=buf, width=200), "demo", every_steps=5), buf


def test_a_line_per_phase_per_tenth_and_per_few_steps():
    rep, buf = _reporter()
    rep(Event("toy world", detail="installing"))
    rep(Event("toy world", detail="installing"))  # the same phase again: no new line
    for done in range(101):
        rep(Event("student", done, 100))
    rep(Event("train", detail="OPD"))
    for step in range(12):
        rep(Event("rollout", step=step, detail="OPD"))  # phases inside a step: no line
        metrics = {"rollout_accuracy": 0.25 + step / 100, "response_len_mean": 30.0}
        rep(Event("done step", step=step, detail="OPD", metrics=metrics))
    lines = buf.getvalue().splitlines()
    assert all(line.startswith("[demo ") and " s] " in line for line in lines)
    texts = [line.split(" s] ", 1)[1] for line in lines]
    assert texts[0] == "installing · toy world"
    counted = [t for t in texts if t.startswith("student ")]
    assert counted == [f"student {d}/100" for d in range(0, 101, 10)]
    steps = [t for t in texts if t.startswith("OPD · step")]
    assert [t.split(" step ")[-1].split(":")[0] for t in steps] == ["1", "5", "10"]
    assert "acc 0.29" in steps[1] and "len 30" in steps[1]
    assert "OPD · train" in texts
    assert len(lines) == 1 + 11 + 1 + 3


def test_short_counted_phases_print_start_and_end():
    rep, buf = _reporter()
    for done in range(4):
        rep(Event("table", done, 3))
    texts = [line.split(" s] ", 1)[1] for line in buf.getvalue().splitlines()]
    assert texts == ["table 0/3", "table 3/3"]  # short phases: start and end only


def test_interleaved_counted_phases_with_changing_details_print_each_tenth_once():
    rep, buf = _reporter()
    for model in ("student", "expert"):
        for done in range(201):
            rep(Event("generated", done, 200, detail=f"{600 + done} tok/s"))
            rep(Event("graded", done, 200, detail=model))
    texts = [line.split(" s] ", 1)[1] for line in buf.getvalue().splitlines()]
    assert len([t for t in texts if "generated" in t]) == 2 * 11
    assert [t for t in texts if "graded" in t][:11] == [
        f"student · graded {d}/200" for d in range(0, 201, 20)
    ]


def test_a_phase_waiting_at_zero_prints_once():
    """A sweep's child reports "run 0/40" every second while models load: one line, not 40."""
    buf = io.StringIO()
    rep = LineReporter(Console(file=buf, width=200), "sweep")
    for _ in range(30):
        rep(Event("train · run", 0, 40))
    rep(Event("train · run", 4, 40))
    for _ in range(3):
        rep(Event("train · run", 0, 40))  # the next run starts again at 0: printed once
    lines = buf.getvalue().splitlines()
    assert [x.split("] ", 1)[1] for x in lines] == [
        "train · run 0/40",
        "train · run 4/40",
        "train · run 0/40",
    ]

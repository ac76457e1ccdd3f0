"""On the toy world, a short TC-OPD run raises the student's toy-math accuracy (slow: ~1 min)."""

from __future__ import annotations

import json

import pytest

from tcopd.cli.main import main


@pytest.mark.slow
def test_short_tcopd_run_raises_toy_math_accuracy(tmp_path, capsys):
    from tcopd.runtime.toy import ensure_toy

    world = ensure_toy()
    student_acc = 100.0 * world.table()["models"]["student"]["accuracy"]
    out = tmp_path / "tc"
    try:
        main(
            [
                "train",
                "--toy",
                "--lambdas",
                "1.5,-0.5",
                "--out",
                str(out),
                "--steps",
                "30",
                "--eval-every",
                "30",
            ]
        )
    except SystemExit as e:
        assert e.code in (0, None)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    final = rows[-1]["eval_mean_at_n"]  # 100 held-out toy-math problems, temperature 1.0
    print(f"student {student_acc:.1f}% → TC-OPD(1.5,-0.5) after 30 steps {final:.1f}%")
    assert final >= student_acc + 15, (student_acc, final)
    # the anti-expert was loaded and scored: its log-ratio is logged every step
    assert all("logratio/anti_expert" in r for r in rows)

"""A shortened `tcopd demo` on the small toy world: every artefact is produced and consistent."""

from __future__ import annotations

import json

import pytest

from tcopd.cli.main import main


@pytest.mark.slow
def test_small_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    try:
        main(
            [
                "demo",
                "--small",
                "--out",
                str(out),
                "--toy-dir",
                str(tmp_path / "toy"),
                "--eval-limit",
                "8",
            ]
        )
    except SystemExit as e:
        assert e.code in (0, None)
    text = capsys.readouterr().out
    for name in ("OPD", "G-OPD", "TC-OPD(1.5,-0.5)", "TC-OPD(1.5,-1.5)"):
        rows = [
            json.loads(x) for x in (out / "train" / name / "metrics.jsonl").read_text().splitlines()
        ]
        assert [r["step"] for r in rows] == [1, 2]
        assert (out / "eval" / name / "summary.json").is_file()
    for name in ("student", "expert", "anti-expert"):
        assert json.loads((out / "eval" / name / "summary.json").read_text())["n"] == 1
    png = out / "figure2_rollout_accuracy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table1 = json.loads((out / "table1_accuracy.json").read_text())
    summary = json.loads((out / "demo_summary.json").read_text())
    # Table 1's numbers are the eval summaries' numbers
    for name, (mean, se) in summary["accuracy"].items():
        s = json.loads((out / "eval" / name / "summary.json").read_text())
        assert mean == pytest.approx(s["mean_at_n"]) and se == pytest.approx(s["stderr"])
    assert "Table 1" in text and "report.md" in text
    assert table1
    # the cost table counts one teacher for OPD/G-OPD and two for TC-OPD
    cost = (out / "table2_cost.csv").read_text()
    assert "# teachers" in cost

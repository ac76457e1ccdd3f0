"""`tcopd demo --multitask`: its six settings are valid runs of the multi-task world, and the
per-domain table (interference = single-task − multi-task) follows from the sweep's report."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tcopd.pipelines import demo_multitask as mt
from tcopd.pipelines.sweep.config import check_train_config, expand_grid, run_train_config


def _world(root: Path) -> SimpleNamespace:
    return SimpleNamespace(
        root=root,
        student=root / "student",
        math_teacher=root / "math_teacher",
        code_teacher=root / "code_teacher",
        train_files={d: root / f"train_{d}.jsonl" for d in ("math", "code", "mixed")},
    )


def test_the_six_settings_resolve_to_the_study(tmp_path):
    world = _world(tmp_path)
    cfg = mt.sweep_config(mt.MultitaskDemoConfig(out=str(tmp_path / "o")), world, [0])
    settings = expand_grid(cfg)
    assert [s.name for s in settings] == [*mt.MULTI, "math-only", "code-only"]
    runs = {s.name: run_train_config(cfg, s, 0, tmp_path / s.dirname) for s in settings}
    for s in settings:  # teachers and λ as tcopd train checks them (nothing is loaded)
        check_train_config(runs[s.name], s, None)
    tc = runs["tc-opd-0.5"]
    assert tc.lambda_table == {
        "math": {"math": 1.5, "code": -0.5},
        "code": {"code": 1.5, "math": -0.5},
    }
    assert tc.data == str(world.train_files["mixed"]) and tc.batch_size == 32 and tc.steps == 40
    assert runs["routed-opd"].lambda_table == {"math": {"math": 1.0}, "code": {"code": 1.0}}
    math_only = runs["math-only"]
    assert math_only.data == str(world.train_files["math"]) and math_only.batch_size == 16
    assert math_only.teacher == [f"math={world.math_teacher}:1"] and not math_only.lambda_table
    assert cfg.baseline == "routed-g-opd" and cfg.eval_benchmark == "toy-multitask"


def _block(mean: float) -> dict:
    return {"mean": mean}


def test_per_domain_rows_and_interference_by_hand():
    acc = {  # setting → (math mean@n, code mean@n)
        "routed-opd": (60.0, 50.0),
        "routed-g-opd": (70.0, 55.0),
        "tc-opd-0.5": (72.0, 65.0),
        "tc-opd-1.5": (40.0, 45.0),
        "math-only": (80.0, 5.0),
        "code-only": (10.0, 75.0),
    }
    report = {
        "per_setting": {
            name: {
                "domains": {
                    "math": {"mean_at_n": _block(m), "mean_tokens": _block(20.0)},
                    "code": {"mean_at_n": _block(c), "mean_tokens": _block(30.0)},
                }
            }
            for name, (m, c) in acc.items()
        }
    }
    rows = {r["setting"]: r for r in mt.per_domain_rows(report)}
    assert rows["tc-opd-0.5"]["math_interference"] == pytest.approx(80.0 - 72.0)
    assert rows["tc-opd-0.5"]["code_interference"] == pytest.approx(75.0 - 65.0)
    assert rows["routed-opd"]["math_interference"] == pytest.approx(20.0)
    assert rows["math-only"]["math_interference"] is None  # references have none
    assert rows["code-only"]["code_tokens"] == 30.0
    text = mt._markdown(list(rows.values()), 1)
    assert "| tc-opd-0.5 | 72.0 | 20.0 | +8.0 | 65.0 | 30.0 | +10.0 |" in text
    assert "One seed: no interval" in text

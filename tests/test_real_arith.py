"""The real-model learning gate (`make test-real`, in `.ci/run`): SmolLM2-135M-Instruct gets
better at the arith task add20 through tcopd — the real-model counterpart of the toy learning
gate (tests/test_learning_gate.py).

One short run of the study's recipe (examples/sweep_arith.yaml: its train block, read here, so
the gate and the study cannot drift apart) with OPD, seed 0, for the first 8 of its 16 steps: the
study's runs are that run continued, with the same data order and constant lr. The statistic is
the rise in rollout accuracy, mean of steps 5–8 minus mean of steps 1–2 (16 responses a step).
Its threshold comes from the study's measured curves (docs/results.md §11, the gate column of
`benchmarks/arith_study.py`): the smallest rise over its nine full-weight runs minus a margin for
another machine's arithmetic (see GATE_MARGIN).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from real_model import ROOT, smollm2_dir
from train_fixtures import run_cli

from tcopd.runtime.data import arith

pytestmark = [pytest.mark.slow, pytest.mark.real]

STUDY = ROOT / "examples" / "sweep_arith.yaml"
GATE_STEPS = 8
EARLY, LATE = (1, 2), (5, 8)  # 1-based steps, inclusive
STUDY_MIN_RISE = None  # points: the smallest rise over the study's nine runs (results.md §11)
GATE_MARGIN = None  # points


def test_smollm2_gets_better_at_add20(tmp_path, capsys):
    smol = smollm2_dir()
    data = tmp_path / "add20"
    arith.write_task("add20", data)
    train = yaml.safe_load(STUDY.read_text())["train"]
    train.update(
        student=str(smol),
        expert=str(smol),
        anti_expert=None,
        teacher_prompt=[f"expert={ROOT / 'examples/arith/expert.yaml'}"],
        data=str(data / "train.parquet"),
        lambdas="1",
        steps=GATE_STEPS,
        seed=0,
        out=str(tmp_path / "run"),
    )
    train = {k: v for k, v in train.items() if v is not None}
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(train))
    code, _, err = run_cli(["train", "--config", str(config)], capsys)
    assert code == 0, err[-2000:]
    rows = [json.loads(x) for x in (Path(train["out"]) / "metrics.jsonl").read_text().splitlines()]
    acc = {r["step"]: 100 * r["rollout_accuracy"] for r in rows if "rollout_accuracy" in r}
    assert sorted(acc) == list(range(1, GATE_STEPS + 1))
    early = sum(acc[s] for s in range(EARLY[0], EARLY[1] + 1)) / (EARLY[1] - EARLY[0] + 1)
    late = sum(acc[s] for s in range(LATE[0], LATE[1] + 1)) / (LATE[1] - LATE[0] + 1)
    rise = late - early
    curve = ", ".join(f"{acc[s]:.0f}" for s in sorted(acc))
    assert rise >= STUDY_MIN_RISE - GATE_MARGIN, (
        f"rollout accuracy rose {rise:+.1f} points (steps {curve} %); the study's smallest rise "
        f"was {STUDY_MIN_RISE:+.1f}, the gate asks at least {STUDY_MIN_RISE - GATE_MARGIN:+.1f}"
    )

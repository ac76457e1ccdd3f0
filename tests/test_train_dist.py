"""Two-process DeepSpeed training on CPU (gloo): both ranks end with identical weights."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from train_fixtures import make_world

REPO = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, *extra: str) -> dict[str, str]:
    """One tiny 2-process training step under torchrun; ``{rank: weights digest}``."""
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TCOPD_DEBUG": "1"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "--master_port",
            str(port),
            str(REPO / "tests" / "dist_train_script.py"),
            str(tmp_path),
            "--steps",
            "1",
            "--batch-size",
            "4",
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    digests = dict(re.findall(r"RANK (\d) DIGEST ([0-9a-f]+)", p.stdout))
    assert set(digests) == {"0", "1"}, p.stdout
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    assert (tmp_path / "run" / "checkpoints" / latest / "model").is_dir()
    return digests


@pytest.mark.dist
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_two_process_step_keeps_replicas_identical(tmp_path, zero_stage):
    make_world(tmp_path)
    digests = _run(tmp_path, "--zero-stage", str(zero_stage))
    assert digests["0"] == digests["1"]


@pytest.mark.dist
def test_sharded_teachers_train_exactly_like_local_ones(tmp_path):
    """Each rank hosts one of the two teachers; the step's weights equal those of local placement."""
    make_world(tmp_path)
    local = _run(tmp_path, "--teacher-placement", "local")
    shard = _run(tmp_path, "--teacher-placement", "shard")
    assert local["0"] == local["1"] == shard["0"] == shard["1"]


@pytest.mark.dist
@pytest.mark.parametrize("zero_stage", [3])
def test_two_ranks_one_step_off(tmp_path, zero_stage):
    """--max-staleness 1 on two ranks (HF engine: each rank samples from its own copy; ZeRO-3
    scores π_old on that copy too, while it generates): identical replicas, staleness 0 then 1.
    ZeRO-2 (the default) on two ranks: tests/test_train_vllm.py, one step off with vLLM."""
    make_world(tmp_path)
    extra = ("--steps", "3", "--max-staleness", "1", "--zero-stage", str(zero_stage))
    digests = _run(tmp_path, *extra)
    assert digests["0"] == digests["1"]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["staleness"] for r in rows] == [0, 1, 1]
    assert rows[0]["is_weight_max"] == pytest.approx(1.0, abs=1e-4)
    assert rows[0]["is_weight_min"] == pytest.approx(1.0, abs=1e-4)

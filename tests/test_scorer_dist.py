"""Shard placement: 2 processes (gloo, CPU) give the same numbers as one process."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from helpers_tiny import make_tiny_qwen3, make_tokenizer

from tcopd.runtime.models import loading as rm
from tcopd.runtime.scoring.scorer import Scorer
from tcopd.runtime.training.distributed import round_robin_owners

TEACHERS = ["t0", "t1", "t2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sequences(rank: int):
    g = torch.Generator().manual_seed(100 + rank)
    n = 3 + rank  # ranks hold different numbers of sequences
    P = [
        torch.randint(0, 100, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist()
        for _ in range(n)
    ]
    R = [
        torch.randint(0, 100, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
        for _ in range(n)
    ]
    return P, R


def _worker(rank: int, world: int, port: int, paths: dict, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    from tcopd.runtime.training import distributed

    info = distributed.init_distributed("cpu")
    assert info.backend == "gloo" and info.world_size == world
    owner = round_robin_owners(TEACHERS, world)
    models = {"student": rm.load_causal_lm(paths["student"])}
    models |= {n: rm.load_causal_lm(paths[n]) for n in TEACHERS if owner[n] == rank}
    scorer = Scorer(
        models, placement="shard", device="cpu", token_budget=16, chunk_size=4, teacher_owner=owner
    )
    P, R = _sequences(rank)
    res = scorer.score(P, R)
    torch.save(
        {"logprobs": res.logprobs, "hosted": sorted(scorer.models)},
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    distributed.shutdown()


@pytest.mark.dist
def test_shard_two_processes_equal_single_process(tmp_path):
    tok = make_tokenizer(tmp_path)
    paths = {"student": str(make_tiny_qwen3(tmp_path, tok, seed=0))}
    for i, name in enumerate(TEACHERS):
        paths[name] = str(make_tiny_qwen3(tmp_path, tok, seed=10 + i, tie=i % 2 == 0))
    mp.spawn(_worker, args=(2, _free_port(), paths, str(tmp_path)), nprocs=2, join=True)

    single = Scorer({n: rm.load_causal_lm(p) for n, p in paths.items()}, token_budget=1000)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        # rank 0 hosts t0 and t2, rank 1 hosts t1 (round robin), both host the student
        assert got["hosted"] == (["student", "t0", "t2"] if rank == 0 else ["student", "t1"])
        P, R = _sequences(rank)
        want = single.score(P, R).logprobs
        assert set(got["logprobs"]) == {"student", *TEACHERS}
        for name in want:
            assert len(got["logprobs"][name]) == len(R)
            for g, w, r in zip(got["logprobs"][name], want[name], R, strict=True):
                assert g.shape == (len(r),)
                torch.testing.assert_close(g, w, atol=1e-5, rtol=0)

"""Device choice and ``torch.distributed`` set-up: the one module that initialises process groups.

Launch with ``torchrun`` (or anything that sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT`` and ``LOCAL_RANK``). Without those variables everything runs as a single process
and no process group is created. Backend: ``nccl`` when the device is CUDA, ``gloo`` otherwise
(so the distributed paths are testable on CPU).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from tcopd.errors import ConfigError, TcopdError, TrainingError

R = TypeVar("R")


class RankFailed(TrainingError):
    """Raised on every rank together when any rank failed (:meth:`Reduce.raise_any`): no rank is
    left waiting for another in a collective, and the group can be shut down cleanly."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank, the world size, its device and the backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(device: str | torch.device | None = None, local_rank: int = 0) -> torch.device:
    """``None``/``"auto"``: ``cuda:<local_rank>`` if CUDA is available, else CPU.

    ``"cuda"`` means this process's GPU (``cuda:<local_rank>``); ``"cuda:N"`` and ``"cpu"`` are
    taken as given. Asking for CUDA on a machine without it is a ConfigError.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device in (None, "", "auto"):
        return (
            torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        )
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device!r} is not a device: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device!r}: CUDA is not available here; use --device cpu")
        index = local_rank if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
        return torch.device(f"cuda:{index}")
    if dev.type != "cpu":
        raise ConfigError(f"--device {device!r} is not supported: use cpu, cuda or cuda:N")
    return dev


def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the launcher's environment variables (0, 1, 0 if unset)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise ConfigError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers ({e})") from e
    return rank, world, local


def init_distributed(
    device: str | torch.device | None = None, timeout_s: float = 1800.0
) -> DistInfo:
    """Initialise the default process group from the environment (idempotent) and pick the device.

    Single-process (``WORLD_SIZE`` unset or 1): no process group, just the device.
    """
    rank, world, local = env_world()
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        dev = pick_device(device, local)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return DistInfo(rank, world, local, dev, dist.get_backend())
    dev = pick_device(device, local)
    if world <= 1:
        return DistInfo(0, 1, 0, dev, None)
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise ConfigError(
            "WORLD_SIZE > 1 but MASTER_ADDR / MASTER_PORT are not set: launch with torchrun"
        )
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(
        backend=backend,
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
        device_id=dev if dev.type == "cuda" else None,
    )
    return DistInfo(rank, world, local, dev, backend)


def current() -> DistInfo:
    """The process group's view without initialising anything (rank 0 of 1 when there is none)."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        _, _, local = env_world()
        dev = pick_device(None, local)
        return DistInfo(rank, world, local, dev, dist.get_backend())
    return DistInfo()


def available_memory(device: torch.device) -> int:
    """Bytes free on ``device``: CUDA's free memory, or the host's MemAvailable on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62  # unknown: do not refuse


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Destroy the default process group if this process created one."""
    if dist.is_available() and dist.is_initialized():
        # Everyone arrives first: a rank that tears down while another still talks to the store
        # (rank 0 hosts it) aborts the process ("terminate called without an active exception").
        dist.barrier()
        dist.destroy_process_group()


def round_robin_owners(names: list[str], world_size: int) -> dict[str, int]:
    """``{name: rank}``: the i-th name (in the given order) is hosted by rank ``i mod world_size``."""
    return {name: i % world_size for i, name in enumerate(names)}


class Reduce:
    """Named reductions over ranks: ``sum({"tokens": 12.0, ...})`` → the same keys, summed.

    One all-reduce per call (values packed in float64 in key order; every rank must pass the
    same keys). The packed tensor lives on the rank's compute device (``info.device``): NCCL,
    the backend on CUDA, reduces CUDA tensors only. Single process: the values come back
    unchanged.
    """

    def __init__(self, info: DistInfo | None = None):
        self.info = info or current()

    @property
    def world_size(self) -> int:
        return self.info.world_size

    def _reduce(self, values: dict[str, float], op: dist.ReduceOp) -> dict[str, float]:
        if not self.info.distributed or not values:
            return {k: float(v) for k, v in values.items()}
        keys = sorted(values)
        t = torch.tensor(
            [float(values[k]) for k in keys], dtype=torch.float64, device=self.info.device
        )
        dist.all_reduce(t, op=op)
        return dict(zip(keys, t.tolist()))

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, values: dict[str, float]) -> dict[str, float]:
        return self._reduce(values, dist.ReduceOp.MAX)

    def raise_any(self, error: str, cause: BaseException | None = None) -> None:
        """Every rank passes its error message (``""``: none). If any rank's is not empty, every
        rank raises :class:`RankFailed` with the first failing rank's message, prefixed
        ``rank R:`` when there are several ranks. One all-reduce of a flag; the messages travel
        only on failure. Call it, on every rank, before a collective that a failed rank would
        otherwise leave the others waiting in (the process group's timeout is 30 minutes)."""
        if not self.info.distributed:
            if error:
                raise RankFailed(error) from cause
            return
        if not self.max({"failed": 1.0 if error else 0.0})["failed"]:
            return
        mine = f"rank {self.info.rank}: {error}" if error else ""
        first = next(str(e) for e in self.gather(mine) if e)
        raise RankFailed(first) from cause

    def gather(self, obj: object) -> list[object]:
        """Every rank's ``obj``, in rank order (a list of one in a single process)."""
        if not self.info.distributed:
            return [obj]
        out: list[object] = [None] * self.info.world_size
        dist.all_gather_object(out, obj)
        return out


def one_line(e: BaseException) -> str:
    """An exception as one line: a TcopdError's message, otherwise ``Type: message``."""
    text = str(e) if isinstance(e, TcopdError) else f"{type(e).__name__}: {e}".rstrip(": ")
    return (text.splitlines() or [type(e).__name__])[0]


def on_every_rank(reduce: Reduce, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """``fn(*args, **kwargs)``; when it raised on any rank, every rank raises
    :class:`RankFailed` with the first failing rank's message (:meth:`Reduce.raise_any`).

    For work a rank does alone (sampling, grading, the advantage): a rank that fails there would
    otherwise leave the others waiting in the next collective. In one process ``fn``'s own
    exception propagates unchanged."""
    if not reduce.info.distributed:
        return fn(*args, **kwargs)
    try:
        result = fn(*args, **kwargs)
    except Exception as e:
        reduce.raise_any(one_line(e), e)
        raise  # unreachable: raise_any raised
    reduce.raise_any("")
    return result

"""Small helpers shared by the parts: device, dtype, per-phase time and peak memory."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any


def device_and_dtype(opts: dict[str, Any]):
    """CUDA in bf16 when there is a GPU; otherwise CPU in float32 (bf16 matmuls are slow on CPU)."""
    import torch

    if torch.cuda.is_available() and not opts.get("cpu"):
        return torch.device("cuda:0"), torch.bfloat16
    return torch.device("cpu"), torch.float32


def gb(n_bytes: float) -> float:
    return n_bytes / 1e9


@contextmanager
def phase(device, out: dict[str, Any]):
    """Time a block (synchronised) and record CUDA's peak allocated memory within it.

    ``out`` receives ``seconds``, ``peak_gb`` and ``start_gb`` (memory already allocated when the
    block began: the resident models); the memory numbers are None on CPU.
    """
    import torch

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        out["start_gb"] = gb(torch.cuda.memory_allocated(device))
    else:
        out["start_gb"] = None
    t0 = time.perf_counter()
    yield out
    if cuda:
        torch.cuda.synchronize(device)
    out["seconds"] = time.perf_counter() - t0
    out["peak_gb"] = gb(torch.cuda.max_memory_allocated(device)) if cuda else None


def fmt_gb(value: float | None) -> str:
    return "n/a on CPU" if value is None else f"{value:.1f} GB"


def is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def free_cuda() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

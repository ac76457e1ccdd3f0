"""The rollout engine of a run: the HF engine on the training module, or one vLLM engine per rank.

Choices (docs/train.md, "vLLM in the loop"):

- vLLM: one colocated engine per training rank (verl's hybrid-engine layout), each holding a
  full copy of the policy (tensor-parallel size 1 when there are several ranks) and sampling
  that rank's share of the prompts. After every update the new weights are pushed to every
  engine (``rollout.sync``).
- The engine runs in its own process (vLLM's default multi-process mode), also when
  ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` is set: an in-process engine adopts the process group
  DeepSpeed created and destroys it when it shuts down.
- On CUDA with several ranks, each rank's engine process sees only that rank's GPU
  (``CUDA_VISIBLE_DEVICES`` narrowed while it starts), else every engine lands on GPU 0.
- The engine's own log (its processes' output) goes to ``<out>/vllm-rank<r>.log``; when it
  fails, the root cause found there is the one-line error.
- The context is prompt + response tokens, capped at the model's positions; CPU runs eager
  (nothing to capture); sleep mode only where vLLM has it (CUDA).
- ``--lora``: the engine serves the student's base weights plus the adapter (vLLM's LoRA
  support); a sync pushes the adapter only (``rollout.sync``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from tcopd.errors import ConfigError
from tcopd.pipelines.train.config import TrainConfig
from tcopd.runtime.generation.rollout import RolloutEngine, make_engine
from tcopd.runtime.training.distributed import DistInfo

_MULTIPROC = "VLLM_ENABLE_V1_MULTIPROCESSING"


def rollout_engine(
    cfg: TrainConfig,
    dist: DistInfo,
    tokenizer: Any,
    policy: torch.nn.Module,
    separate: bool,
    dtype: torch.dtype,
) -> RolloutEngine:
    if cfg.engine == "hf":
        return make_engine(
            "hf",
            policy,
            tokenizer,
            device=dist.device,
            token_budget=cfg.rollout_token_budget,
            needs_weight_sync=separate,
        )
    if dist.world_size > 1 and cfg.vllm_tensor_parallel_size > 1:
        raise ConfigError(
            "--vllm-tensor-parallel-size > 1 needs a single training process: with several "
            "ranks each rank's engine holds a whole copy on its own GPU"
        )
    os.environ[_MULTIPROC] = "1"  # see the module docstring
    with _own_device(dist):
        return make_engine(
            "vllm",
            cfg.student,  # vLLM loads the model and its tokenizer from the student's directory
            dtype="bfloat16" if dtype == torch.bfloat16 else "float32",
            gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
            tensor_parallel_size=cfg.vllm_tensor_parallel_size,
            max_model_len=cfg.max_prompt_tokens + cfg.max_response_tokens,
            enable_sleep_mode=cfg.vllm_sleep and dist.device.type == "cuda",
            enforce_eager=dist.device.type != "cuda",
            seed=cfg.seed,
            log_path=Path(cfg.out) / f"vllm-rank{dist.rank}.log",
            max_lora_rank=cfg.lora_rank if cfg.lora else None,  # serve the adapter, not merged
        )


@contextmanager
def _own_device(dist: DistInfo) -> Iterator[None]:
    """While the engine's processes start: only this rank's GPU is visible (several ranks)."""
    if dist.device.type != "cuda" or dist.world_size == 1:
        yield
        return
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = old.split(",") if old else [str(i) for i in range(torch.cuda.device_count())]
    os.environ["CUDA_VISIBLE_DEVICES"] = visible[dist.device.index or 0]
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = old

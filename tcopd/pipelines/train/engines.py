"""The rollout engine of a run: the HF engine on the training module, or a vLLM engine per rank."""

from __future__ import annotations

from typing import Any

import torch

from tcopd.pipelines.train.config import TrainConfig
from tcopd.runtime.distributed import DistInfo
from tcopd.runtime.rollout import RolloutEngine, make_engine


def rollout_engine(
    cfg: TrainConfig, dist: DistInfo, tokenizer: Any, policy: torch.nn.Module, separate: bool
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
    return make_engine(
        "vllm",
        cfg.student,
        tokenizer,
        gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        tensor_parallel_size=cfg.vllm_tensor_parallel_size,
        enable_sleep_mode=cfg.vllm_sleep,
    )

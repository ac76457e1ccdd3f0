"""The learner: the student model and its optimizer under DeepSpeed — the only module that imports
``deepspeed``. (DeepSpeed calls its wrapper an "engine"; in tcopd an engine is a rollout engine,
so this is the learner, and DeepSpeed's object is ``Learner.ds``.)

Choices, and why:

- The optimizer is a client ``torch.optim.AdamW``: a config-named optimizer becomes FusedAdam /
  DeepSpeedCPUAdam and compiles C++ on first use (tens of seconds), which we keep out of the
  hot path (docs/performance.md).
- ``managed_gradient_accumulation: false``: micro-batches are cut by a *token budget*, so their
  number varies from mini-batch to mini-batch. The trainer calls :meth:`backward` once per
  micro-batch with a loss already normalised by the mini-batch's totals, then :meth:`step` once
  per mini-batch — every ``step`` is an optimizer update.
- Data-parallel ranks must run the same number of forward/backward passes (ZeRO reduces and, at
  stage 3, gathers parameters collectively), so the trainer equalises micro-batch counts with
  :meth:`max_over_ranks`. DeepSpeed averages gradients over ranks; the trainer multiplies its
  loss by the world size so that the global normaliser is the one in the objective.
- Under ZeRO-3 the output projection's weight is partitioned outside its own module's forward,
  so log-probs are computed by *calling* the head module chunk by chunk (see the trainer).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def _quiet_deepspeed() -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)


def _ensure_process_group() -> None:
    """DeepSpeed needs a process group even in one process: make a world of one on a free port.

    (Without launcher variables DeepSpeed would try MPI discovery, which needs mpi4py.) A group
    that exists already is used as it is (e.g. the world of one an in-process vLLM engine made).
    """
    os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed's engine asserts it is set
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return

    import deepspeed

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError(
            "WORLD_SIZE > 1 but no process group: call distributed.init_distributed() first"
        )
    # A private free port, passed explicitly: nothing leaks into os.environ (child processes of
    # this one start their own group and must not collide with ours).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    deepspeed.init_distributed(
        dist_backend="nccl" if torch.cuda.is_available() else "gloo",
        auto_mpi_discovery=False,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=0,
        world_size=1,
    )


def deepspeed_config(
    zero_stage: int,
    bf16: bool,
    grad_clip: float,
    offload_optimizer: bool = False,
    offload_params: bool = False,
) -> dict[str, Any]:
    """The DeepSpeed JSON config the trainer uses (written into the run directory)."""
    zero: dict[str, Any] = {"stage": zero_stage}
    if zero_stage >= 1:
        zero.update({"overlap_comm": False, "contiguous_gradients": True})
    if offload_optimizer and zero_stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    # ZeRO-Offload would otherwise insist on DeepSpeedCPUAdam (a C++ build); keep the client AdamW.
    force_ds_cpu_optimizer = False
    if offload_params and zero_stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "gradient_clipping": grad_clip if grad_clip > 0 else 0.0,
        "bf16": {"enabled": bool(bf16)},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": force_ds_cpu_optimizer,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class Learner:
    """The learner: an HF causal LM and a client AdamW optimizer inside DeepSpeed (``self.ds``)."""

    def __init__(
        self,
        model: torch.nn.Module,
        lr: float,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        zero_stage: int = 2,
        bf16: bool = False,
        grad_clip: float = 1.0,
        offload_optimizer: bool = False,
        offload_params: bool = False,
    ):
        _quiet_deepspeed()
        import deepspeed

        _ensure_process_group()
        self.config = deepspeed_config(
            zero_stage, bf16, grad_clip, offload_optimizer, offload_params
        )
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
        self.ds, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=self.config
        )
        self.zero_stage = zero_stage

    @property
    def module(self) -> torch.nn.Module:
        """The underlying HF model (parameters partitioned under ZeRO-3)."""
        return self.ds.module

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate gradients of one micro-batch (loss already normalised by the mini-batch)."""
        self.ds.backward(loss, scale_wrt_gas=False)

    def step(self) -> float | None:
        """One optimizer update; returns the gradient norm before clipping (None if unknown)."""
        self.ds.step()
        norm = self.ds.get_global_grad_norm()
        return float(norm) if norm is not None else None

    def train(self) -> None:
        self.ds.train()

    def eval(self) -> None:
        self.ds.eval()

    @contextlib.contextmanager
    def gathered_params(self, trainable_only: bool = False) -> Iterator[None]:
        """Make full parameters visible outside forward (ZeRO-3); a no-op below stage 3."""
        if self.zero_stage < 3:
            yield
            return
        import deepspeed

        params = [p for p in self.module.parameters() if p.requires_grad or not trainable_only]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            yield

    def full_state_dict(self, trainable_only: bool = False) -> dict[str, torch.Tensor]:
        """The full (gathered) weights on CPU, for the rollout engine and HF checkpoints;
        ``trainable_only``: just the parameters that require grad (a LoRA adapter)."""
        keep = {n for n, p in self.module.named_parameters() if p.requires_grad}
        with self.gathered_params(trainable_only):
            return {
                k: v.detach().to("cpu", copy=True)
                for k, v in self.module.state_dict().items()
                if k in keep or not trainable_only
            }

    def save(
        self, directory: str | Path, client_state: dict[str, Any], frozen: bool = True
    ) -> None:
        """Optimizer/scheduler/model state for exact resumption (collective: every rank calls it).
        ``frozen=False``: leave out the frozen weights (LoRA: they are the base model's)."""
        self.ds.save_checkpoint(
            str(directory),
            tag="deepspeed",
            client_state=client_state,
            save_latest=False,
            exclude_frozen_parameters=not frozen,
        )

    def load(self, directory: str | Path, frozen: bool = True) -> dict[str, Any]:
        """Load what :meth:`save` wrote (with the same ``frozen``); returns the client state."""
        path, client_state = self.ds.load_checkpoint(
            str(directory),
            tag="deepspeed",
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
            load_module_strict=frozen,
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {directory}")
        return client_state or {}

    def max_over_ranks(self, value: int) -> int:
        """The maximum of an integer over data-parallel ranks (identity in one process)."""
        if not torch.distributed.is_available() or not torch.distributed.is_initialized():
            return value
        t = torch.tensor([value], dtype=torch.long, device=self.ds.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

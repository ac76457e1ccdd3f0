"""GPU readiness check (issue 8): ``scripts/gpu_check.sh`` runs ``python -m gpu_check``.

Parts, each in its own process: the suite's GPU tests; the scorer vs the plain-logits path at
Qwen3-4B's shape; one TC-OPD training step (teachers local, then offloaded); with two GPUs, 2
steps of ``tcopd train`` on 2 ranks (ZeRO-2, NCCL); a vLLM rollout with an in-place weight
update. See docs/gpu.md.
"""

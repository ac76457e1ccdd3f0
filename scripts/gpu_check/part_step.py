"""Part 3: one TC-OPD training step at Qwen3-4B's shape, teachers ``local`` then ``offload``.

Student + reference + 2 teachers (expert λ=1.5, anti-expert λ=−0.5), random weights, bf16,
DeepSpeed ZeRO-3 with gradient checkpointing (the paper's Table 2 set-up, on one GPU). No
generation: a 4B HF ``generate`` of long responses would take the whole time window, and the
rollout engine is checked separately (part 4), so the responses are random token ids of
realistic lengths. What is timed is everything after the rollout, through the library's own
functions, as ``tcopd.pipelines.train.step.train_step`` calls them:

1. π_old: ``batched_response_logprobs`` on the training module (as with the vLLM engine);
2. π_ref + teachers: ``Scorer.score`` with the teachers' placement;
3. advantages (``training_signal``), then one PPO update (``ppo_update`` through
   ``Learner``: one epoch, one mini-batch, so one optimizer step).

Each phase records its time and CUDA's peak allocated memory. Under ``offload`` the scorer keeps
π_ref and both teachers in CPU memory and moves each onto the GPU only to score (as the trainer).

Optimizer state: at 4 B parameters AdamW's fp32 master weights and moments are 48 GB, which
with four 8 GB models does not fit an 80 GB card, so ``optimizer_offload="auto"`` puts the
optimizer in CPU memory (ZeRO-Offload) when the GPU has under 120 GB (an H200 keeps it on the
GPU). The row notes say which was used.
"""

from __future__ import annotations

import copy
from typing import Any

from gpu_check.common import device_and_dtype, fmt_gb, free_cuda, is_oom, phase
from gpu_check.shapes import build_model, n_params, qwen3_config

PLACEMENTS = ("local", "offload")
PHASES = ("π_old", "ref + teachers", "update", "step")
ROWS = [f"{p}: {ph}" for p in PLACEMENTS for ph in PHASES] + ["teachers resident: local − offload"]
LAMBDAS = {"expert": 1.5, "anti_expert": -0.5}


def _learner(student, cfg, bf16: bool, offload_optimizer: bool):
    """``Learner`` at ZeRO-3 (optionally with the optimizer state offloaded to CPU)."""
    from tcopd.runtime.training.learner import Learner

    return Learner(
        student,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        zero_stage=3,
        bf16=bf16,
        grad_clip=cfg.grad_clip,
        offload_optimizer=offload_optimizer,
    )


def run(opts: dict[str, Any], rec) -> None:
    import torch

    from tcopd.pipelines.train.config import TrainConfig

    tiny = bool(opts.get("tiny"))
    device, dtype = device_and_dtype(opts)
    cfg = TrainConfig(out="-")
    lengths = [
        int(x)
        for x in opts.get("step_lengths")
        or ([96, 64, 48, 32] if tiny else [8192, 6144, 4096, 2048])
    ]
    prompt_len = 16 if tiny else 256
    config = qwen3_config(tiny, use_cache=False)
    total_gpu = (
        torch.cuda.get_device_properties(device).total_memory / 1e9
        if device.type == "cuda"
        else 0.0
    )
    choice = opts.get("optimizer_offload", "auto")
    offload_opt = choice == "on" or (choice == "auto" and (device.type == "cpu" or total_gpu < 120))

    student = build_model(config, device, dtype, seed=0)
    student.gradient_checkpointing_enable()
    reference = copy.deepcopy(student).requires_grad_(
        False
    )  # π_ref: the initial student, as the trainer
    teachers = {
        name: build_model(config, device, dtype, seed=1 + k).requires_grad_(False)
        for k, name in enumerate(LAMBDAS)
    }
    learner = _learner(student, cfg, dtype == torch.bfloat16, offload_opt)
    model_gb = n_params(reference) * reference.dtype.itemsize / 1e9
    g = torch.Generator().manual_seed(0)
    prompts = [
        torch.randint(0, config.vocab_size, (prompt_len,), generator=g).tolist() for _ in lengths
    ]
    responses = [torch.randint(0, config.vocab_size, (n,), generator=g).tolist() for n in lengths]
    setup = (
        f"{len(lengths)} responses {'/'.join(map(str, lengths))} tokens, {str(dtype).removeprefix('torch.')}, "
        f"ZeRO-3, grad ckpt, optimizer {'on CPU' if offload_opt else 'on GPU'}"
    )
    rec.set_info(
        device=str(device),
        dtype=str(dtype),
        params=n_params(reference),
        model_gb=model_gb,
        lengths=lengths,
        prompt_tokens=prompt_len,
        optimizer_offload=offload_opt,
        zero_stage=3,
        gradient_checkpointing=True,
    )

    peaks: dict[str, float | None] = {}
    for placement in PLACEMENTS:
        try:
            phases = _one_step(
                learner, reference, teachers, prompts, responses, placement, device, cfg
            )
        except Exception as e:
            if not is_oom(e):
                raise
            free_cuda()
            for ph in PHASES:
                rec.row(
                    f"{placement}: {ph}",
                    "oom",
                    "out of GPU memory",
                    f"{type(e).__name__}: {str(e)[:160]}",
                )
            continue
        for ph in PHASES:
            p = phases[ph]
            note = (
                setup
                if ph == "step"
                else (f"start {fmt_gb(p['start_gb'])}" if p["start_gb"] is not None else "")
            )
            if ph == "update":
                note = f"loss {p['loss']:.4g}, grad norm {p['grad_norm']:.3g}" + (
                    f", {note}" if note else ""
                )
            rec.row(
                f"{placement}: {ph}",
                "ok",
                f"{p['seconds']:.2f} s, peak {fmt_gb(p['peak_gb'])}",
                note,
                seconds=p["seconds"],
                peak_gb=p["peak_gb"],
                start_gb=p["start_gb"],
            )
        peaks[placement] = phases["step"]["peak_gb"]

    check = "teachers resident: local − offload"
    if device.type != "cuda":
        rec.row(
            check,
            "skipped",
            "needs CUDA",
            "peak memory is torch.cuda.max_memory_allocated; none on CPU",
        )
    elif peaks.get("local") is None or peaks.get("offload") is None:
        rec.row(check, "skipped", "a placement did not finish", "see the rows above")
    else:
        diff = peaks["local"] - peaks["offload"]
        rec.row(
            check,
            "ok",
            f"{diff:+.1f} GB peak",
            f"one model is {model_gb:.1f} GB; paper Table 2: +8.2 GB for the 2nd 4B teacher (A100)",
            diff_gb=diff,
            model_gb=model_gb,
        )


def _one_step(
    learner, reference, teachers, prompts, responses, placement, device, cfg
) -> dict[str, dict[str, Any]]:
    """Score π_old, π_ref and the teachers, compute advantages, one PPO update; per-phase stats."""
    from tcopd.core.objective import PPOLoss
    from tcopd.core.signal import training_signal
    from tcopd.core.teachers import TeacherSpec
    from tcopd.pipelines.train.update import UpdateBatch, UpdateSettings, ppo_update
    from tcopd.runtime.scoring.forward import batched_response_logprobs
    from tcopd.runtime.scoring.scorer import Scorer
    from tcopd.runtime.training.distributed import Reduce

    scorer = Scorer(
        {"reference": reference, **teachers},
        placement=placement,
        device=device,
        token_budget=cfg.score_token_budget,
        chunk_size=cfg.chunk_size,
    )
    if placement == "offload":
        reference.to(device)  # as the trainer: only the teachers start in CPU memory
    free_cuda()
    out: dict[str, dict[str, Any]] = {ph: {} for ph in PHASES}
    with phase(device, out["step"]):
        with phase(device, out["π_old"]):
            old_lp, _ = batched_response_logprobs(
                learner.module, prompts, responses, cfg.score_token_budget, cfg.chunk_size
            )
        step_peak = [out["π_old"]["peak_gb"]]
        with phase(device, out["ref + teachers"]):
            scored = scorer.score(prompts, responses)
        step_peak.append(out["ref + teachers"]["peak_gb"])
        # The trainer's own signal (core/signal.py) and update (pipelines/train/update.py).
        signal = training_signal(
            old_lp,
            scored.logprobs["reference"],
            {n: scored.logprobs[n] for n in teachers},
            [TeacherSpec(n, n, LAMBDAS[n]) for n in teachers],
            domains=[None] * len(responses),
            normalization=cfg.teacher_normalization,
            beta=cfg.beta,
        )
        with phase(device, out["update"]):
            upd = ppo_update(
                learner,
                UpdateBatch(prompts, responses, signal.mask_BT, signal.old_BT, signal.adv_BT, None),
                PPOLoss(cfg.clip_eps, cfg.clip_eps_high, cfg.dual_clip, cfg.aggregation),
                UpdateSettings(1, 1, cfg.train_token_budget, cfg.chunk_size),
                seed=0,
                reduce=Reduce(),
            )
        step_peak.append(out["update"]["peak_gb"])
    out["update"].update(loss=upd["loss"], grad_norm=upd["grad_norm"])
    # The step's own peak counter was reset by each phase: its peak is the largest phase peak.
    out["step"]["peak_gb"] = None if device.type != "cuda" else max(step_peak)
    return out

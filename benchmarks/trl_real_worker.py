"""Timed TRL training steps for ``bench_real_step.py``; runs in ``.trl-venv`` (TRL 1.16) only.

    .trl-venv/bin/python benchmarks/trl_real_worker.py SPEC.json RESULT.json

SPEC (written by bench_real_step.py) holds the model directory, the chat prompts (one row per
rollout, in order, each prompt repeated ``responses`` times), the token ids tcopd gives each row,
and the settings. The run:

1. builds a ``datasets.Dataset`` whose ``prompt`` column is the chat messages (TRL applies the
   tokenizer's chat template with ``add_generation_prompt=True``, as tcopd's ``--template chat``);
2. trains ``trl.DistillationTrainer`` (on-policy, teacher = a second copy of the model, loss =
   generalised JSD with ``beta=1``: the reverse KL(π_θ ‖ teacher) over the whole vocabulary at
   every sampled position; TRL 1.16 has no sampled-token estimator) for ``steps`` optimizer
   steps, one per generation batch, the whole batch in one micro-batch unless SPEC says otherwise;
3. times every optimizer step with a callback (``on_step_begin`` → ``on_step_end``: generation,
   both forwards, the loss, the backward and the optimizer step), and inside it the generation
   (``_generate``) and the teacher's backbone forward (``_get_last_hidden_state`` on the teacher);
4. checks every row's prompt token ids against tcopd's and records each step's completion
   lengths, then writes RESULT (the model is not saved: nothing after training is timed).

Imports only torch, transformers, datasets and trl.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path


def rss_gb() -> float:
    """This process's resident memory now (GB)."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def timed_trainer(base, expected_ids: list[list[int]]):
    """``base`` (DistillationTrainer) with phase clocks, prompt-id checks and completion lengths."""

    class TimedTrainer(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.phase: dict[str, float] = {}  # this step's phase seconds
            self.lengths: list[list[int]] = []  # completion lengths of each generation batch
            self.bad_tokenization = 0
            self.rows_seen = 0

        def _add(self, name: str, seconds: float) -> None:
            self.phase[name] = self.phase.get(name, 0.0) + seconds

        def _tokenize_prompts(self, prompts):
            prompt_ids, images, fields = super()._tokenize_prompts(prompts)
            for ids in prompt_ids:
                want = expected_ids[self.rows_seen % len(expected_ids)]
                self.bad_tokenization += list(ids) != want
                self.rows_seen += 1
            return prompt_ids, images, fields

        def _generate(self, prompts):
            t0 = time.perf_counter()
            out = super()._generate(prompts)
            self._add("generation", time.perf_counter() - t0)
            return out

        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            self.lengths.append([int(n) for n in out["completion_mask"].sum(1).tolist()])
            return out

        def _get_last_hidden_state(self, unwrapped_model, *args, **kwargs):
            t0 = time.perf_counter()
            out = super()._get_last_hidden_state(unwrapped_model, *args, **kwargs)
            if unwrapped_model is self.accelerator.unwrap_model(self.teacher_model):
                self._add("teacher_forward", time.perf_counter() - t0)
            return out

    return TimedTrainer


def step_clock(trainer_box: list):
    """A callback that records each optimizer step's wall time and phase times."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.steps: list[dict[str, float]] = []
            self.t0 = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            trainer_box[0].phase = {}
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_s = time.perf_counter() - self.t0
            phase = dict(trainer_box[0].phase)
            rest = step_s - phase.get("generation", 0.0) - phase.get("teacher_forward", 0.0)
            self.steps.append({"step_s": step_s, **phase, "student_update": rest})

    return StepClock()


def config(spec: dict, work_dir: Path):
    """DistillationConfig: fp32 CPU, one optimizer step per generation batch, tcopd's sampling."""
    from trl import DistillationConfig

    micro = spec["micro_batch"]
    return DistillationConfig(
        output_dir=str(work_dir / "trl"),
        max_steps=spec["steps"],
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=spec["generation_batch"] // micro,
        shuffle_dataset=False,  # rows are already in order
        seed=spec["seed"],
        data_seed=spec["seed"],
        # AdamW as tcopd's (client torch AdamW): constant lr, no decay, clip 1.0.
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        # fp32, no activation checkpointing (TRL's defaults are bf16 and checkpointing on).
        bf16=False,
        fp16=False,
        use_cpu=spec["device"] == "cpu",
        gradient_checkpointing=False,
        model_init_kwargs={"dtype": "float32"},
        teacher_model_init_kwargs={"dtype": "float32"},
        disable_dropout=True,
        # Sampling as tcopd's rollouts: temperature 1, top-k off, top-p 1, no penalty.
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        min_p=None,
        repetition_penalty=1.0,
        max_completion_length=spec["max_new_tokens"],
        beta=1.0,  # reverse KL(student ‖ teacher)
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def main(spec_path: str, result_path: str) -> None:
    t_start = time.perf_counter()
    import datasets
    import torch
    import transformers
    import trl
    from transformers import AutoTokenizer
    from trl import DistillationTrainer

    spec = json.loads(Path(spec_path).read_text())
    work_dir = Path(result_path).parent
    rows = spec["messages"] * spec["steps"]  # one generation batch of rows per step
    dataset = datasets.Dataset.from_dict({"prompt": rows})
    tokenizer = AutoTokenizer.from_pretrained(spec["model"], padding_side="left")
    box: list = [None]
    clock = step_clock(box)
    trainer = timed_trainer(DistillationTrainer, spec["prompt_ids"])(
        model=spec["model"],
        teacher_model=spec["model"],  # a second copy of the same weights
        args=config(spec, work_dir),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[clock],
    )
    box[0] = trainer
    load_s, rss_loaded = time.perf_counter() - t_start, rss_gb()
    trainer.train()
    gen = trainer.generation_config.to_dict()
    result = {
        "load_s": load_s,
        "rss_after_load_gb": rss_loaded,
        "peak_rss_self_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
        "steps": clock.steps,
        "lengths": trainer.lengths,
        "global_step": trainer.state.global_step,
        "bad_tokenization": trainer.bad_tokenization,
        "torch_threads": torch.get_num_threads(),
        "generation": {
            k: gen.get(k)
            for k in ("do_sample", "temperature", "top_k", "top_p", "min_p")
            + ("repetition_penalty", "max_new_tokens", "eos_token_id", "use_cache")
        },
        "losses": [r["loss"] for r in trainer.state.log_history if "loss" in r],
        "versions": {
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "datasets": datasets.__version__,
        },
    }
    Path(result_path).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:3])

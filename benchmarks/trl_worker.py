"""One TRL training run for ``bench_vs_trl.py``; runs in ``.trl-venv`` (TRL 1.16), never in tcopd's.

    .trl-venv/bin/python benchmarks/trl_worker.py SPEC.json RESULT.json

SPEC (written by bench_vs_trl.py) holds the model paths, the prompt texts with the token ids
tcopd gives them, the dataset order (tcopd's step order, each prompt repeated
``samples_per_prompt`` times) and the settings. The run:

1. builds a ``datasets.Dataset`` with columns ``prompt`` (plain text: no chat template, so TRL
   tokenises it as is) and ``idx`` (the prompt's index in tcopd's prompt list);
2. trains ``trl.DistillationTrainer`` (on-policy: the student samples every completion; loss =
   generalised JSD with ``beta=1``, i.e. the reverse KL(π_θ ‖ teacher) over the whole vocabulary at
   every sampled position, summed over the generation batch's tokens and divided by their number)
   with one optimizer step per generation batch, shuffling off, constant lr, fp32;
3. checks what TRL actually did: every generation batch's prompt indices (against SPEC's order)
   and every prompt's token ids (against tcopd's), recorded by a thin subclass;
4. saves the final model (weights + tokenizer) and writes RESULT: the time of ``train()`` alone
   (models loaded before the clock starts), the model-loading time, the recorded order, the
   generation settings TRL resolved, and the package versions.

Imports only torch, transformers, datasets and trl.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(spec_path: str, result_path: str) -> None:
    t_start = time.perf_counter()
    import datasets
    import torch
    import transformers
    import trl
    from transformers import AutoTokenizer
    from trl import DistillationConfig, DistillationTrainer

    spec = json.loads(Path(spec_path).read_text())
    expected_ids = spec["prompt_ids"]

    class RecordingTrainer(DistillationTrainer):
        """DistillationTrainer that records each generation batch's prompts and their token ids."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.seen: list[list[int]] = []  # prompt indices of each generation batch
            self.bad_tokenization = 0  # prompts whose ids differ from tcopd's

        def _generate_and_score_completions(self, inputs):
            self.seen.append([int(x["idx"]) for x in inputs])
            self._batch_idx = self.seen[-1]
            return super()._generate_and_score_completions(inputs)

        def _tokenize_prompts(self, prompts):
            prompt_ids, images, fields = super()._tokenize_prompts(prompts)
            for i, ids in zip(self._batch_idx, prompt_ids, strict=True):
                self.bad_tokenization += list(ids) != expected_ids[i]
            return prompt_ids, images, fields

    order = spec["order"]
    dataset = datasets.Dataset.from_dict(
        {"prompt": [spec["prompts"][i] for i in order], "idx": order}
    )
    micro, accum = spec["micro_batch"], spec["generation_batch"] // spec["micro_batch"]
    cpu = spec["device"] == "cpu"
    args = DistillationConfig(
        output_dir=str(Path(spec["work_dir"]) / "trl"),
        # Schedule: max_steps optimizer steps, each on one fresh generation batch of
        # micro × accum completions (TRL generates once per accumulation window).
        max_steps=spec["steps"],
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum,
        shuffle_dataset=False,  # the dataset is already in tcopd's step order
        seed=spec["seed"],
        data_seed=spec["seed"],
        # Optimiser as tcopd's: AdamW (0.9, 0.999, eps 1e-8), constant lr, no decay, clip 1.0.
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=spec["grad_clip"],
        optim="adamw_torch",
        # fp32 end to end (TRL's default is bf16 = not fp16), no activation checkpointing
        # (TRL's default is on; tcopd's toy recipe has it off).
        bf16=False,
        fp16=False,
        use_cpu=cpu,
        gradient_checkpointing=False,
        model_init_kwargs={"dtype": "float32"},
        teacher_model_init_kwargs={"dtype": "float32"},
        disable_dropout=True,  # the toy models have no dropout; tcopd applies none either
        # Sampling as tcopd's rollouts: temperature 1, top-k off, top-p 1, no min-p, no penalty.
        temperature=spec["temperature"],
        top_k=0,
        top_p=spec["top_p"],
        min_p=None,
        repetition_penalty=1.0,
        max_completion_length=spec["max_new_tokens"],
        # Loss: beta = 1.0 is the reverse KL(student ‖ teacher) (0.0 forward KL, between: JSD).
        beta=1.0,
        # Quiet, no checkpoints during training (the final model is saved below).
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    tokenizer = AutoTokenizer.from_pretrained(
        spec["student"], padding_side="left", truncation_side="left"
    )
    trainer = RecordingTrainer(
        model=spec["student"],
        teacher_model=spec["teacher"],
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    t_loaded = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t_loaded
    trainer.save_model(spec["model_dir"])

    gen = trainer.generation_config.to_dict()
    result = {
        "train_s": train_s,
        "load_s": t_loaded - t_start,
        "global_step": trainer.state.global_step,
        "generation_batches": trainer.seen,
        "bad_tokenization": trainer.bad_tokenization,
        "generation": {
            k: gen.get(k)
            for k in (
                "do_sample",
                "temperature",
                "top_k",
                "top_p",
                "min_p",
                "repetition_penalty",
                "max_new_tokens",
                "eos_token_id",
            )
        },
        "losses": [row["loss"] for row in trainer.state.log_history if "loss" in row],
        "versions": {
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "datasets": datasets.__version__,
        },
    }
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:3])

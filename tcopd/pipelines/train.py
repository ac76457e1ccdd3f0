"""``tcopd train``: the TC-OPD loop on DeepSpeed (SPEC §1, §5).

One step: a batch of prompts → rollouts (HF engine on CPU, vLLM on GPU) → grade (rollout
accuracy, the paper's "training reward") → score π_old, π_ref and every active teacher →
advantages → PPO updates through DeepSpeed → push the new weights to the rollout engine →
one row of ``metrics.jsonl``.

Choices:

- Determinism: the data order is a seeded permutation per epoch and every step's sampling
  seed is derived from (seed, step), so a step depends only on the weights and optimizer state;
  resuming from a checkpoint therefore reproduces an uninterrupted run (one process).
- The HF rollout engine generates with the training module itself (no copy, nothing to sync
  below ZeRO-3); vLLM gets the gathered weights in place after every step.
- π_ref defaults to a frozen copy of the student's initial weights.
- Multi-process: each rank takes ``batch_size / world`` prompts; metrics are summed over ranks.
"""

from __future__ import annotations

import copy
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from tcopd.config import to_dict, write_resolved
from tcopd.core.metrics import mean_at_n, standard_error
from tcopd.core.teachers import (
    active_teachers,
    build_teacher_specs,
    lambda_matrix,
    validate_lambda_table,
)
from tcopd.errors import ConfigError, DataError, TrainingError
from tcopd.pipelines.train_config import TrainConfig, resume_conflicts
from tcopd.pipelines.train_step import (
    Batch,
    compute_advantages,
    old_policy_logprobs,
    pad_right,
    ppo_update,
)
from tcopd.runtime import checkpoint as ckpt
from tcopd.runtime import distributed
from tcopd.runtime.io import JsonlAppender, read_jsonl_tolerant, write_jsonl
from tcopd.runtime.models import check_same_tokenizer, load_causal_lm, load_tokenizer
from tcopd.runtime.scorer import Scorer, peak_memory_gb

Progress = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    run_dir: Path
    steps_done: int
    last_metrics: dict[str, Any]
    final_model: Path | None
    weights_digest: str = ""  # sha256 of this rank's full weights (replicas must agree)


# ------------------------------------------------------------------------------------ set-up
def resolve_toy(cfg: TrainConfig, progress: Progress | None = None) -> TrainConfig:
    """Fill the toy world's paths into a ``toy: true`` config (building the world if absent).

    Default teachers: the math expert, and the code anti-expert when two λ are given; default
    data: the toy *math* train and test sets (the paper's single-task setting).
    """
    if not cfg.toy:
        return cfg
    teachers_given = bool(cfg.expert or cfg.anti_expert or cfg.teacher)
    two = bool(cfg.lambdas) and len(cfg.lambdas.split(",")) >= 2
    if cfg.student and cfg.data and teachers_given:
        return cfg  # everything given explicitly: no need to touch (or build) the toy world
    from tcopd.runtime.toy import ensure_toy

    if progress:
        progress({"phase": "toy world (building on first use)"})
    world = ensure_toy()
    return replace(
        cfg,
        student=cfg.student or str(world.student),
        expert=cfg.expert or (None if teachers_given else str(world.expert)),
        anti_expert=cfg.anti_expert
        or (None if teachers_given or not two else str(world.anti_expert)),
        data=cfg.data or str(world.train_files["math"]),
        eval_data=cfg.eval_data or str(world.test_files["math"]),
    )


def _check_new_run_dir(out: Path, overwrite: bool) -> None:
    if (out / "config.yaml").exists() or (out / "metrics.jsonl").exists():
        if not overwrite:
            raise ConfigError(
                f"{out} already holds a run: pass --resume {out} to continue it, or --overwrite to replace it"
            )
        shutil.rmtree(out)


def load_resume_config(run_dir: Path, flags: dict[str, Any]) -> TrainConfig:
    """The saved config of ``run_dir``, with the flags that may change (steps, ...) applied."""
    from tcopd.config import build, read_yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"--resume {run_dir}: not a run directory (no config.yaml)")
    saved = read_yaml(path)
    saved.pop("teachers", None)
    saved.pop("world_size", None)
    conflicts = resume_conflicts(saved, flags)
    if conflicts:
        raise ConfigError(
            f"--resume {run_dir}: flags conflict with the run's config ({'; '.join(conflicts)})"
        )
    saved.update({k: v for k, v in flags.items() if v is not None and k != "out"})
    saved["out"] = str(run_dir)
    return build(TrainConfig, saved)


def _prompts(
    cfg: TrainConfig, path: str, tokenizer: Any
) -> tuple[list[list[int]], list[str], list[str | None]]:
    """Token ids, gold answers and domains of a prepared data file; over-long prompts skipped."""
    from tcopd.runtime.datasets import load_prepared
    from tcopd.runtime.prompts import render_prompt

    rows = load_prepared(path)
    ids, golds, domains, skipped = [], [], [], 0
    for row in rows:
        text = render_prompt(row["prompt"], tokenizer, cfg.template)
        toks = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(toks) > cfg.max_prompt_tokens:
            skipped += 1
            continue
        ids.append(list(toks))
        golds.append(str(row["reward_model"]["ground_truth"]))
        domains.append(row.get("domain"))
    if not ids:
        raise DataError(
            f"{path}: no prompt fits max_prompt_tokens={cfg.max_prompt_tokens} ({skipped} skipped)"
        )
    return ids, golds, domains


def _model_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    if cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32


def data_order(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def step_prompts(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Indices of the prompts of ``step`` (0-based): consecutive slices of per-epoch permutations."""
    out: list[int] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n)
        order = data_order(n, seed, epoch)
        take = min(batch_size - len(out), n - offset)
        out.extend(order[offset : offset + take])
        pos += take
    return out


# -------------------------------------------------------------------------------------- run
class _Trainer:
    def __init__(self, cfg: TrainConfig, progress: Progress | None):
        self.cfg = cfg
        self.progress = progress or (lambda event: None)
        self.dist = distributed.init_distributed(cfg.device)
        self.device = self.dist.device
        self.run_dir = Path(cfg.out)
        self.specs = build_teacher_specs(cfg.expert, cfg.anti_expert, cfg.lambdas, cfg.teacher)
        self.table = validate_lambda_table(cfg.lambda_table, self.specs)
        self.active = active_teachers(self.specs, self.table)
        if cfg.batch_size % self.dist.world_size:
            raise ConfigError(
                f"batch_size {cfg.batch_size} is not divisible by the {self.dist.world_size} ranks"
            )
        if cfg.mini_batches < 1 or cfg.ppo_epochs < 1:
            raise ConfigError("mini_batches and ppo_epochs must be at least 1")
        if not cfg.student:
            raise ConfigError("no student: pass --student PATH (or --toy)")
        if not cfg.data:
            raise ConfigError(
                "no training data: pass --data FILE (prepared with `tcopd prepare`), or --toy"
            )

    def _event(self, **kw: Any) -> None:
        if self.dist.is_main:
            self.progress(kw)

    def setup(self) -> None:
        cfg, dev = self.cfg, self.device
        dtype = _model_dtype(cfg, dev)
        self._event(phase="loading models")
        self.tokenizer = load_tokenizer(cfg.student)
        student = load_causal_lm(cfg.student, dtype=dtype, device=dev)
        if cfg.gradient_checkpointing:
            student.gradient_checkpointing_enable()
            student.config.use_cache = False
        if cfg.reference:
            check_same_tokenizer(self.tokenizer, load_tokenizer(cfg.reference), "reference")
            reference = load_causal_lm(cfg.reference, dtype=dtype, device=dev)
        else:
            reference = copy.deepcopy(student)
        reference.requires_grad_(False)
        teacher_models: dict[str, torch.nn.Module] = {}
        owner: dict[str, int] = {}
        if cfg.teacher_placement == "shard":
            owner = distributed.round_robin_owners(
                [s.name for s in self.active], self.dist.world_size
            )
        for spec in self.active:
            check_same_tokenizer(self.tokenizer, load_tokenizer(spec.path), spec.name)
            if owner.get(spec.name, self.dist.rank) == self.dist.rank:
                place = torch.device("cpu") if cfg.teacher_placement == "offload" else dev
                teacher_models[spec.name] = load_causal_lm(
                    spec.path, dtype=dtype, device=place
                ).requires_grad_(False)
        self.scorer = Scorer(
            {"reference": reference, **teacher_models},
            placement=cfg.teacher_placement,
            device=dev,
            token_budget=cfg.score_token_budget,
            chunk_size=cfg.chunk_size,
            teacher_owner=owner or None,
        )
        if cfg.teacher_placement == "offload":
            reference.to(dev)  # π_ref is needed every step; only teachers are offloaded
        self.prompt_ids, self.golds, self.domains = _prompts(cfg, cfg.data, self.tokenizer)
        self.eval_set = _prompts(cfg, cfg.eval_data, self.tokenizer) if cfg.eval_data else None
        from tcopd.runtime.engine import TrainEngine

        # Under ZeRO-3 the training module's parameters are partitioned and every forward is a
        # collective, so ranks could not generate or score independently: the HF engine then
        # samples from (and π_old is scored on) a full copy that is synced after every step.
        self.separate_rollout = cfg.engine == "hf" and cfg.zero_stage == 3
        self.rollout_model = (
            copy.deepcopy(student).requires_grad_(False) if self.separate_rollout else None
        )
        self._event(phase="starting DeepSpeed")
        torch.manual_seed(cfg.seed)
        self.engine = TrainEngine(
            student,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            zero_stage=cfg.zero_stage,
            bf16=dtype == torch.bfloat16,
            grad_clip=cfg.grad_clip,
            offload_optimizer=cfg.offload_optimizer,
            offload_params=cfg.offload_params,
        )
        self.rollout = self._make_rollout_engine()
        from tcopd.runtime.grading import Grader

        self.grader = Grader(workers=cfg.grader_workers, timeout_s=cfg.grade_timeout_s)

    def _make_rollout_engine(self) -> Any:
        from tcopd.runtime.rollout import make_engine

        if self.cfg.engine == "hf":
            model = self.rollout_model if self.separate_rollout else self.engine.module
            return make_engine(
                "hf",
                model,
                self.tokenizer,
                device=self.device,
                token_budget=self.cfg.rollout_token_budget,
            )
        return make_engine(
            "vllm",
            self.cfg.student,
            self.tokenizer,
            gpu_memory_utilization=self.cfg.vllm_gpu_memory_utilization,
            tensor_parallel_size=self.cfg.vllm_tensor_parallel_size,
            enable_sleep_mode=self.cfg.vllm_sleep,
        )

    def _sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.dist.distributed:
            t = t.clone()
            torch.distributed.all_reduce(t)
        return t

    # -- one step ------------------------------------------------------------------------------
    def step(self, step: int) -> dict[str, Any]:
        from tcopd.runtime.rollout import SamplingParams

        cfg, W, R = self.cfg, self.dist.world_size, self.dist.rank
        t_step = time.perf_counter()
        idx = step_prompts(len(self.prompt_ids), cfg.batch_size, cfg.seed, step)
        per_rank = cfg.batch_size // W
        idx = idx[R * per_rank : (R + 1) * per_rank]
        sampling = SamplingParams(
            n=cfg.samples_per_prompt,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_new_tokens=cfg.max_response_tokens,
            seed=(cfg.seed * 1_000_003 + step) * W + R,
            stop=(),
            logprobs=cfg.truncated_is,
        )
        self._event(phase="rollout", step=step)
        t0 = time.perf_counter()
        if cfg.vllm_sleep and cfg.engine == "vllm":
            self.rollout.wake()
        comps = self.rollout.generate([self.prompt_ids[i] for i in idx], sampling)
        if cfg.vllm_sleep and cfg.engine == "vllm":
            self.rollout.sleep()
        t_rollout = time.perf_counter() - t0
        comps = [c for c in comps if c.response_ids]
        if not comps:
            raise TrainingError(f"step {step}: every rollout was empty")
        prompts = [c.prompt_ids for c in comps]
        responses = [c.response_ids for c in comps]
        golds = [self.golds[idx[c.prompt_index]] for c in comps]
        for k, c in enumerate(comps):
            self.grader.submit(k, golds[k], c.text)  # grading overlaps with scoring

        self._event(phase="scoring", step=step)
        t0 = time.perf_counter()
        policy = self.rollout_model if self.separate_rollout else self.engine.module
        old_lp, entropy = old_policy_logprobs(
            policy, prompts, responses, cfg.score_token_budget, cfg.chunk_size
        )
        scored = self.scorer.score(prompts, responses)
        t_scoring = time.perf_counter() - t0
        T = max(len(r) for r in responses)
        mask_BT = pad_right([torch.ones(len(r)) for r in responses], T)
        old_BT = pad_right(old_lp, T)
        ref_BT = pad_right(scored.logprobs["reference"], T)
        teacher_KBT = torch.stack([pad_right(scored.logprobs[s.name], T) for s in self.active])
        verdicts = self.grader.results()
        correct_B = torch.tensor([1.0 if verdicts[k] else 0.0 for k in range(len(comps))])
        group_B = torch.tensor([c.prompt_index for c in comps])
        lam_BK = lambda_matrix(
            self.active, [self.domains[idx[c.prompt_index]] for c in comps], self.table
        )
        try:
            reward_BT, adv_BT = compute_advantages(
                teacher_KBT,
                ref_BT,
                old_BT,
                mask_BT,
                lam_BK,
                cfg.teacher_normalization,
                cfg.beta,
                correct_B,
                group_B,
                cfg.outcome_weight,
            )
        except TrainingError as e:
            raise TrainingError(f"step {step}: {e}; the last checkpoint is kept") from e
        is_BT = None
        if cfg.truncated_is and all(c.logprobs is not None for c in comps):
            is_BT = (
                truncated_is_weight_rows(old_BT, [c.logprobs for c in comps], T, cfg.is_cap)
                * mask_BT
            )

        self._event(phase="update", step=step)
        t0 = time.perf_counter()
        upd = ppo_update(
            self.engine,
            Batch(prompts, responses, mask_BT, old_BT, adv_BT, is_BT),
            epochs=cfg.ppo_epochs,
            mini_batches=cfg.mini_batches,
            token_budget=cfg.train_token_budget,
            chunk_size=cfg.chunk_size,
            clip_eps=cfg.clip_eps,
            clip_eps_high=cfg.clip_eps_high,
            dual_clip=cfg.dual_clip,
            aggregation=cfg.aggregation,
            seed=cfg.seed * 7919 + step,
            world_size=W,
            all_reduce_sum=self._sum,
            step=step,
        )
        t_update = time.perf_counter() - t0
        t0 = time.perf_counter()
        if cfg.engine == "vllm" or self.separate_rollout:
            self.rollout.update_weights(self.engine.full_state_dict())
        t_sync = time.perf_counter() - t0

        # -- metrics (sums over ranks, then means) ----------------------------------------------
        lens = torch.tensor([float(len(r)) for r in responses])
        d_K = [((teacher_KBT[k] - ref_BT) * mask_BT).sum() for k in range(len(self.active))]
        sums = self._sum(
            torch.tensor(
                [
                    mask_BT.sum(),
                    (reward_BT * mask_BT).sum(),
                    ((old_BT - ref_BT) * mask_BT).sum(),
                    -(old_BT * mask_BT).sum(),
                    sum(float((e).sum()) for e in entropy),
                    float(len(comps)),
                    correct_B.sum(),
                    float(sum(1 for c in comps if c.finish_reason == "length")),
                    float(sum(v is None for v in verdicts.values())),
                    (is_BT * mask_BT).sum() if is_BT is not None else 0.0,
                    *d_K,
                ],
                dtype=torch.float64,
            )
        )
        ntok, nseq = float(sums[0]), float(sums[5])
        len_max = self._max(float(lens.max()))
        wall = time.perf_counter() - t_step
        row: dict[str, Any] = {
            "step": step + 1,
            "loss": upd["loss"],
            "reward_mean": float(sums[1]) / ntok,
            **{f"logratio/{s.name}": float(sums[10 + k]) / ntok for k, s in enumerate(self.active)},
            "kl_ref": float(sums[2]) / ntok,
            "neg_logp_old": float(sums[3]) / ntok,
            "entropy": float(sums[4]) / ntok,
            "clip_fraction": upd["clip_fraction"],
            "approx_kl_old": upd["approx_kl"],
            "grad_norm": upd["grad_norm"],
            "is_weight_mean": float(sums[9]) / ntok if is_BT is not None else None,
            "is_weight_max": self._max(float(is_BT.max())) if is_BT is not None else None,
            "response_len_mean": ntok / nseq,
            "response_len_max": len_max,
            "truncated_fraction": float(sums[7]) / nseq,
            "rollout_accuracy": float(sums[6]) / nseq,
            "ungraded": int(sums[8]),
            "responses": int(nseq),
            "time_rollout_s": t_rollout,
            "time_scoring_s": t_scoring,
            "time_update_s": t_update,
            "time_sync_s": t_sync,
            "time_step_s": wall,
            "tokens_per_s": ntok / wall,
            "peak_mem_gb": self._peak_mem(),
        }
        return row

    def _max(self, v: float) -> float:
        if not self.dist.distributed:
            return v
        t = torch.tensor([v], dtype=torch.float64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t)

    def _peak_mem(self) -> dict[str, float]:
        mine = peak_memory_gb(self.device)
        if not self.dist.distributed:
            return mine
        gathered: list[Any] = [None] * self.dist.world_size
        torch.distributed.all_gather_object(
            gathered, {f"rank{self.dist.rank}:{k}": v for k, v in mine.items()}
        )
        return {k: v for d in gathered for k, v in d.items()}

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, step: int) -> dict[str, float]:
        from tcopd.runtime.rollout import SamplingParams

        assert self.eval_set is not None
        ids, golds, _ = self.eval_set
        n = self.cfg.eval_prompts or len(ids)
        ids, golds = ids[:n], golds[:n]
        W, R = self.dist.world_size, self.dist.rank
        mine = list(range(R, len(ids), W))
        self._event(phase="eval", step=step)
        sampling = SamplingParams(
            n=self.cfg.eval_n,
            temperature=self.cfg.temperature,
            top_p=self.cfg.top_p,
            max_new_tokens=self.cfg.max_response_tokens,
            seed=self.cfg.seed + 17,
        )
        comps = self.rollout.generate([ids[i] for i in mine], sampling)
        verdicts = self.grader.grade(
            [golds[mine[c.prompt_index]] for c in comps], [c.text for c in comps]
        )
        counts = torch.zeros(len(ids), dtype=torch.float64)
        for c, v in zip(comps, verdicts):
            counts[mine[c.prompt_index]] += 1.0 if v else 0.0
        counts = self._sum(counts).tolist()
        n_s = self.cfg.eval_n
        return {
            "eval_mean_at_n": 100.0 * mean_at_n([(n_s, int(c)) for c in counts]),
            "eval_stderr": 100.0 * standard_error([c / n_s for c in counts]),
        }

    # -- checkpoints -----------------------------------------------------------------------------
    def save(self, step: int) -> Path:
        self._event(phase="checkpoint", step=step - 1)
        tmp = (
            ckpt.begin(self.run_dir, step)
            if self.dist.is_main
            else ckpt.checkpoint_root(self.run_dir) / f".tmp-{ckpt.step_name(step)}"
        )
        distributed.barrier()
        self.engine.save(tmp, {"step": step})
        state_dict = self.engine.full_state_dict()
        final = ckpt.checkpoint_root(self.run_dir) / ckpt.step_name(step)
        if self.dist.is_main:
            ckpt.save_hf(self.engine.module, self.tokenizer, state_dict, tmp / "model")
            state = {
                "step": step,
                "seed": self.cfg.seed,
                "rng": ckpt.rng_state(),
                "world_size": self.dist.world_size,
            }
            final = ckpt.commit(self.run_dir, tmp, step, state, keep=self.cfg.keep_checkpoints)
        distributed.barrier()
        return final

    def restore(self) -> int:
        path = ckpt.latest_checkpoint(self.run_dir)
        if path is None:
            return 0
        state = ckpt.read_state(path)
        if state.get("world_size", 1) != self.dist.world_size:
            raise ConfigError(
                f"--resume: the run was saved with {state['world_size']} process(es), now {self.dist.world_size}"
            )
        self.engine.load(path)
        ckpt.set_rng_state(state["rng"])
        if self.cfg.engine == "vllm" or self.separate_rollout:
            self.rollout.update_weights(self.engine.full_state_dict())
        return int(state["step"])


def truncated_is_weight_rows(
    old_BT: torch.Tensor, rollout_rows: list[list[float]], T: int, cap: float
) -> torch.Tensor:
    from tcopd.core.objective import truncated_is_weight

    rollout_BT = pad_right(rollout_rows, T)
    return truncated_is_weight(old_BT, rollout_BT, cap)


def run(
    cfg: TrainConfig,
    resume: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> TrainResult:
    """Train; see the module docstring. ``resume``: continue the run in ``cfg.out``."""
    cfg = resolve_toy(cfg, progress)
    run_dir = Path(cfg.out)
    if not resume:
        _check_new_run_dir(run_dir, overwrite)
    trainer = _Trainer(cfg, progress)
    trainer.setup()
    if trainer.dist.is_main:
        resolved = to_dict(cfg) | {
            "teachers": [to_dict(s) for s in trainer.specs],
            "world_size": trainer.dist.world_size,
        }
        run_dir.mkdir(parents=True, exist_ok=True)
        write_resolved(resolved, run_dir / "config.yaml")
    start = trainer.restore() if resume else 0
    metrics_path = run_dir / "metrics.jsonl"
    if trainer.dist.is_main:
        rows = [r for r in read_jsonl_tolerant(metrics_path) if r.get("step", 0) <= start]
        write_jsonl(metrics_path, rows)
    tb = _tensorboard(run_dir) if cfg.tensorboard and trainer.dist.is_main else None
    appender = JsonlAppender(metrics_path) if trainer.dist.is_main else None
    row: dict[str, Any] = {}
    kill_at = int(os.environ.get("TCOPD_TEST_KILL_AT_STEP", "0"))  # test hook: SIGKILL mid-run
    try:
        for step in range(start, cfg.steps):
            row = trainer.step(step)
            last = step + 1 == cfg.steps
            if trainer.eval_set is not None and (
                (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or last
            ):
                row.update(trainer.evaluate(step))
            if appender is not None:
                appender.write(row)
                if tb is not None:
                    for k, v in row.items():
                        if isinstance(v, (int, float)) and v is not None and math.isfinite(v):
                            tb.add_scalar(k, v, row["step"])
            trainer._event(phase="done step", step=step, metrics=row)
            if kill_at and step + 1 == kill_at:
                os.kill(os.getpid(), 9)
            if (cfg.save_every and (step + 1) % cfg.save_every == 0) or last:
                trainer.save(step + 1)
    finally:
        if appender is not None:
            appender.close()
        trainer.grader.close()
    final = ckpt.latest_checkpoint(run_dir)
    digest = _digest(trainer.engine.full_state_dict())
    if trainer.dist.distributed:
        distributed.shutdown()  # under a launcher: tear the group down together, not at exit
    return TrainResult(run_dir, cfg.steps, row, final / "model" if final else None, digest)


def _digest(state_dict: dict[str, torch.Tensor]) -> str:
    import hashlib

    h = hashlib.sha256()
    for k in sorted(state_dict):
        h.update(k.encode())
        h.update(state_dict[k].float().contiguous().numpy().tobytes())
    return h.hexdigest()


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ConfigError(
            f"--tensorboard needs the tensorboard package: pip install 'tcopd[tensorboard]' ({e})"
        )
    return SummaryWriter(str(run_dir / "tb"))

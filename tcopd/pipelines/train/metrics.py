"""Phase 7, metrics: one row of ``metrics.jsonl`` per step, from named sums over ranks.

Every mean is a global one: this rank's sums (tokens, reward, …) are all-reduced by name and
divided once. Times are this rank's (rank 0 writes the row). ``timer`` records phase times.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from tcopd.core.signal import Signal, pad_right
from tcopd.pipelines.train.grade import Grades
from tcopd.pipelines.train.rollout import Rollouts
from tcopd.pipelines.train.score import Scores
from tcopd.pipelines.train.setup import Trainer
from tcopd.runtime.scoring.scorer import peak_memory_gb


@contextmanager
def timer(name: str, times: dict[str, float]) -> Iterator[None]:
    """Add the wall time of the ``with`` block to ``times[name]`` (seconds)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        times[name] = times.get(name, 0.0) + time.perf_counter() - t0


def step_row(
    tr: Trainer,
    step: int,
    batch: Rollouts,
    scores: Scores,
    grades: Grades,
    signal: Signal,
    is_BT: torch.Tensor | None,
    update: dict[str, float],
    times: dict[str, float],
) -> dict[str, Any]:
    """The metrics of step ``step`` (0-based; the row says ``step + 1``)."""
    # Collectives in the same order on every rank: sum, max, then peak memory's gather.
    s = tr.reduce.sum(_local_sums(tr, batch, scores, grades, signal, is_BT))
    peak = tr.reduce.max(_local_peaks(tr, batch, signal.mask_BT, is_BT))
    return {
        "step": step + 1,
        "loss": update["loss"],
        **_signal_means(s, signal.names, tr.scores_reference),
        "clip_fraction": update["clip_fraction"],
        "approx_kl_old": update["approx_kl"],
        "grad_norm": update["grad_norm"],
        # --loss dense with served teachers: the support's statistics (update.SERVED_STATS)
        **{k: v for k, v in update.items() if k.startswith("served_")},
        **_served_bytes(tr, scores, signal),
        **_is_weight_stats(s, peak, is_BT is not None),
        **_staleness(tr, step, batch, s),
        # device memory vLLM's sleep freed for scoring and the update (sleep mode on only)
        "rollout_sleep_freed_gb": peak["freed"] / 1e9 if _sleeps(tr) else None,
        **_rollout_stats(s, peak, grades.graded),
        **_per_domain(tr, s, grades.graded),
        **{f"time_{k}_s": v for k, v in times.items()},
        "tokens_per_s": s["tokens"] / times["step"],
        "peak_mem_gb": peak_memory(tr),
    }


def _served_bytes(tr: Trainer, scores: Scores, signal: Signal) -> dict[str, float]:
    """Bytes the servers sent per scored position (all ranks), with served teachers' top k."""
    if scores.served is None:
        return {}
    s = tr.reduce.sum({"bytes": scores.served_bytes, "positions": float(signal.mask_BT.sum())})
    return {"served_bytes_per_position": s["bytes"] / max(s["positions"], 1.0)}


def _local_sums(
    tr: Trainer,
    batch: Rollouts,
    scores: Scores,
    grades: Grades,
    signal: Signal,
    is_BT: torch.Tensor | None,
) -> dict[str, float]:
    """This rank's sums by name (tokens, responses, reward, …), to be summed over ranks."""
    m = signal.mask_BT
    return {
        "tokens": float(m.sum()),
        "responses": float(len(batch.completions)),
        "reward": float((signal.reward_BT * m).sum()),
        "kl_ref": float(((signal.old_BT - signal.ref_BT) * m).sum()),
        "neg_logp_old": float(-(signal.old_BT * m).sum()),
        "entropy": sum(float(e.sum()) for e in scores.entropy or []),
        "correct": float(grades.correct_B.sum()),
        "truncated": float(sum(c.finish_reason == "length" for c in batch.completions)),
        "ungraded": float(grades.ungraded),
        **_sampler_sums(tr, batch, signal, is_BT),
        **{f"logratio/{k}": float(v) for k, v in signal.logratio_sums().items()},
        **_domain_sums(tr, batch, grades, m),
    }


def _sampler_sums(
    tr: Trainer, batch: Rollouts, signal: Signal, is_BT: torch.Tensor | None
) -> dict[str, float]:
    """The IS weight's sums (w, w², tokens past the cap) and ``Σ lp_μ − lp_old`` over the
    tokens, when the engine gave its sampling log-probs μ (else zeros)."""
    comps = batch.completions
    if any(c.logprobs is None for c in comps):
        return {"is_weight": 0.0, "is_weight_sq": 0.0, "is_capped": 0.0, "sampler_kl": 0.0}
    m = signal.mask_BT
    mu_BT = pad_right([c.logprobs for c in comps], m.shape[1])
    log_ratio_BT = (signal.old_BT - mu_BT) * m
    out = {"sampler_kl": float(-log_ratio_BT.sum())}
    if is_BT is None:
        return out | {"is_weight": 0.0, "is_weight_sq": 0.0, "is_capped": 0.0}
    capped = (log_ratio_BT > math.log(tr.cfg.is_cap)) & m.bool()
    return out | {
        "is_weight": float((is_BT * m).sum()),
        "is_weight_sq": float((is_BT.square() * m).sum()),
        "is_capped": float(capped.sum()),
    }


def _local_peaks(
    tr: Trainer, batch: Rollouts, m: torch.Tensor, is_BT: torch.Tensor | None
) -> dict[str, float]:
    """This rank's maxima by name, to be maxed over ranks (the IS minimum as ``−max(−w)``)."""
    return {
        "len": float(max(len(r) for r in batch.responses)),
        "is": float(is_BT.max()) if is_BT is not None else 0.0,
        "neg_is": float(-is_BT[m.bool()].min()) if is_BT is not None else 0.0,
        "freed": float(getattr(tr.rollout, "freed_bytes", 0)),
    }


def _signal_means(
    s: dict[str, float], names: tuple[str, ...], scores_reference: bool
) -> dict[str, float | None]:
    """Token means of the reward, each teacher's log-ratio, the KL term, −lp_old, entropy."""
    ntok = s["tokens"]
    return {
        "reward_mean": s["reward"] / ntok,
        **{f"logratio/{n}": s[f"logratio/{n}"] / ntok for n in names},
        "kl_ref": s["kl_ref"] / ntok if scores_reference else None,
        "neg_logp_old": s["neg_logp_old"] / ntok,
        "entropy": s["entropy"] / ntok,
    }


def _is_weight_stats(
    s: dict[str, float], peak: dict[str, float], has_is: bool
) -> dict[str, float | None]:
    """Token mean, max and min of the truncated IS weight, the fraction of tokens at its cap,
    and its effective sample size as a fraction of the tokens, (Σw)² / (N·Σw²) (null when the
    weight is off)."""
    if not has_is:
        keys = "mean max min capped_fraction ess".split()
        return {f"is_weight_{k}": None for k in keys}
    n = s["tokens"]
    return {
        "is_weight_mean": s["is_weight"] / n,
        "is_weight_max": peak["is"],
        "is_weight_min": -peak["neg_is"],
        "is_weight_capped_fraction": s["is_capped"] / n,
        "is_weight_ess": s["is_weight"] ** 2 / (n * s["is_weight_sq"])
        if s["is_weight_sq"]
        else None,
    }


def _staleness(tr: Trainer, step: int, batch: Rollouts, s: dict[str, float]) -> dict[str, Any]:
    """The weights the batch was sampled with (their number of updates), how many steps old
    they are (the same on every rank), and KL(μ ‖ π_old) estimated on the sampled tokens,
    ``mean(lp_μ − lp_old)`` (null without the engine's log-probs μ)."""
    has_mu = all(c.logprobs is not None for c in batch.completions)
    return {
        "policy_version": batch.version,
        "staleness": step - batch.version,
        "kl_sampler_old": s["sampler_kl"] / s["tokens"] if has_mu else None,
    }


def _rollout_stats(s: dict[str, float], peak: dict[str, float], graded: bool) -> dict[str, Any]:
    """Lengths, truncation and grading of the step's rollouts (over all ranks)."""
    ntok, nseq = s["tokens"], s["responses"]
    return {
        "response_len_mean": ntok / nseq,
        "response_len_max": peak["len"],
        "truncated_fraction": s["truncated"] / nseq,
        "rollout_accuracy": s["correct"] / nseq if graded else None,
        "ungraded": int(s["ungraded"]),
        "responses": int(nseq),
    }


def _domains(tr: Trainer) -> list[str]:
    """The training data's domains when there are several (the same list on every rank)."""
    found = sorted({d for d in tr.data.domains if d is not None})
    return found if len(found) > 1 else []


def _domain_sums(tr: Trainer, batch: Rollouts, grades: Grades, m: torch.Tensor) -> dict[str, float]:
    lengths = m.sum(dim=1)
    out: dict[str, float] = {}
    for d in _domains(tr):
        rows = [i for i, dom in enumerate(batch.domains) if dom == d]
        out[f"n/{d}"] = float(len(rows))
        out[f"correct/{d}"] = float(grades.correct_B[rows].sum()) if rows else 0.0
        out[f"tokens/{d}"] = float(lengths[rows].sum()) if rows else 0.0
    return out


def _per_domain(tr: Trainer, s: dict[str, float], graded: bool) -> dict[str, float | None]:
    """``responses/<d>``, ``rollout_accuracy/<d>``, ``response_len_mean/<d>`` (several domains)."""
    out: dict[str, float | None] = {}
    for d in _domains(tr):
        n = s[f"n/{d}"]
        out[f"responses/{d}"] = int(n)
        out[f"rollout_accuracy/{d}"] = s[f"correct/{d}"] / n if n and graded else None
        out[f"response_len_mean/{d}"] = s[f"tokens/{d}"] / n if n else None
    return out


def _sleeps(tr: Trainer) -> bool:
    return bool(getattr(tr.rollout, "sleep_enabled", False))


def peak_memory(tr: Trainer) -> dict[str, float]:
    """Peak memory per device, keyed ``rank<r>:<device>`` when there are several ranks."""
    mine = peak_memory_gb(tr.dist.device)
    if not tr.dist.distributed:
        return mine
    parts = tr.reduce.gather({f"rank{tr.dist.rank}:{k}": v for k, v in mine.items()})
    return {k: v for d in parts for k, v in d.items()}  # type: ignore[union-attr]

"""``tcopd analyze cost``: what each training run cost (the paper's Table 2).

Algorithm choices:
- Wall hours = Σ ``time_step_s`` over every logged row / 3600. Rows of a step logged twice (a
  resumed run redoing a step) both count: that time was spent. "steps" counts distinct steps.
- Devices = the config's ``world_size`` when it has one, else the number of devices that report
  peak memory; device hours = wall hours × devices (GPU-hours on a GPU run).
- Phase share (%) = 100 · Σ time_<phase>_s / Σ time_step_s, for rollout, scoring, update and
  sync; "other" is what is left (logging, checkpoints, evaluation between steps) after the
  trainer's own phases — with the rollout counted as the time the trainer waited for it
  (``time_trainer_idle_s``; in a synchronous run that is the rollout itself).
- The overlap (``--max-staleness 1``, docs/train.md): "step s (measured)" = mean
  ``time_step_s``; "step s (ideal, one step off)" = mean over steps of max(rollout, scoring +
  update) + sync, what a step costs when generation hides behind scoring and the update (in a
  synchronous run: what one step off could reach); "engine idle %" and "trainer idle %" =
  100 · Σ ``time_engine_idle_s`` (``time_trainer_idle_s``) / Σ time_step_s; "staleness max" =
  the largest ``staleness``. Runs logged before these fields existed show them empty.
- Peak memory per device = max over steps of ``peak_mem_gb[device]``; "peak mem max" is the
  largest of those. Tokens/s = mean of the per-step ``tokens_per_s``.
- Teachers come from the resolved ``config.yaml``: every configured teacher with its λ;
  "# teachers" counts those with a non-zero λ (a λ = 0 teacher is never loaded or scored).
- A sweep directory is one column per run that has logged a step, named ``<setting> seed<k>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tcopd.config import field
from tcopd.errors import DataError
from tcopd.pipelines.analyze.sources import Run, column_names, is_number, load_run, run_columns
from tcopd.pipelines.analyze.tables import Row, Table

PHASES: tuple[str, ...] = ("rollout", "scoring", "update", "sync")


@dataclass(frozen=True)
class CostConfig:
    runs: list[str] = field(
        help="Run directories written by `tcopd train` (metrics.jsonl + config.yaml), or sweep "
        "directories (one column per run)."
    )
    names: list[str] = field(
        [], help="Column names, one per run (default: each run directory's name)."
    )


@dataclass(frozen=True)
class CostResult:
    table: Table


def _lam_text(lam: Any) -> str:
    if isinstance(lam, Mapping):  # a per-domain λ row (multi-task Λ matrix)
        return ", ".join(f"{d}={_lam_text(v)}" for d, v in lam.items())
    return f"{lam:g}" if is_number(lam) else str(lam)


def _lam_active(lam: Any) -> bool:
    if isinstance(lam, Mapping):
        return any(v != 0 for v in lam.values())
    return lam != 0


def teachers_of(run: Run) -> tuple[str | None, int | None]:
    """("expert λ=1.5, anti_expert λ=-0.5", number with λ ≠ 0) from the run's config."""
    teachers = (run.config or {}).get("teachers")
    if not isinstance(teachers, list):
        return None, None
    parts, active = [], 0
    for i, t in enumerate(teachers):
        if not isinstance(t, Mapping) or "name" not in t or "lam" not in t:
            raise DataError(
                f"{run.path / 'config.yaml'}: teachers[{i}] must have 'name' and 'lam', got {t!r}"
            )
        parts.append(f"{t['name']} λ={_lam_text(t['lam'])}")
        active += _lam_active(t["lam"])
    return ", ".join(parts), active


def _time(run: Run, line: int, row: dict[str, Any], key: str) -> float:
    v = row.get(key)
    if not is_number(v):
        what = "missing" if key not in row else f"not a number ({v!r})"
        raise DataError(
            f"{run.metrics_path}:{line}: field {key!r} is {what}; the cost table needs per-phase times"
        )
    return float(v)


def peak_memory(run: Run) -> dict[str, float]:
    """``{device: max GB over steps}`` from the rows' ``peak_mem_gb`` mappings."""
    peak: dict[str, float] = {}
    for line, row in run.metrics:
        mem = row.get("peak_mem_gb")
        if mem is None:
            continue
        if not isinstance(mem, Mapping) or not all(is_number(v) for v in mem.values()):
            raise DataError(
                f"{run.metrics_path}:{line}: 'peak_mem_gb' must map device → GB, got {mem!r}"
            )
        for dev, gb in mem.items():
            peak[str(dev)] = max(peak.get(str(dev), float("-inf")), float(gb))
    return peak


def run_cost(run: Run) -> dict[str, Any]:
    """The statistics of one run (keys are the table's row labels, plus ``peak`` by device)."""
    step_s = sum(_time(run, line, row, "time_step_s") for line, row in run.metrics)
    phase_s = {
        p: sum(_time(run, line, row, f"time_{p}_s") for line, row in run.metrics) for p in PHASES
    }
    teachers, n_teachers = teachers_of(run)
    peak = peak_memory(run)
    cfg = run.config or {}
    world = cfg.get("world_size")
    devices = world if is_number(world) and world >= 1 else (len(peak) or None)
    tps = [
        float(row["tokens_per_s"]) for _, row in run.metrics if is_number(row.get("tokens_per_s"))
    ]
    wall_h = step_s / 3600.0
    rows = [row for _, row in run.metrics]
    waited = sum(_first_number(row, "time_trainer_idle_s", "time_rollout_s") for row in rows)
    out: dict[str, Any] = {
        "teachers": teachers,
        "# teachers": n_teachers,
        "steps": len({row["step"] for _, row in run.metrics}),
        "device": cfg.get("device") if isinstance(cfg.get("device"), str) else None,
        "devices": int(devices) if devices is not None else None,
        "wall hours": wall_h,
        "device hours": wall_h * devices if devices is not None else None,
    }
    for p in PHASES:
        out[f"{p} %"] = 100.0 * phase_s[p] / step_s if step_s > 0 else None
    trainer = waited + sum(phase_s[p] for p in PHASES if p != "rollout")
    out["other %"] = 100.0 * (step_s - trainer) / step_s if step_s > 0 else None
    out |= _overlap(rows, step_s)
    out["tokens/s mean"] = sum(tps) / len(tps) if tps else None
    out["peak mem max (GB)"] = max(peak.values()) if peak else None
    out["peak"] = peak
    return out


def _first_number(row: dict[str, Any], *keys: str) -> float:
    return next(float(row[k]) for k in keys if is_number(row.get(k)))


def _overlap(rows: list[dict[str, Any]], step_s: float) -> dict[str, Any]:
    """The measured and the ideal one-step-off step time, idle shares, the largest staleness."""
    n = len(rows)
    ideal = [
        max(r["time_rollout_s"], r["time_scoring_s"] + r["time_update_s"]) + r["time_sync_s"]
        for r in rows
    ]
    out: dict[str, Any] = {
        "step s (measured)": step_s / n if n else None,
        "step s (ideal, one step off)": sum(ideal) / n if n else None,
    }
    for who in ("engine", "trainer"):
        key = f"time_{who}_idle_s"
        have = rows and all(is_number(r.get(key)) for r in rows) and step_s > 0
        out[f"{who} idle %"] = 100.0 * sum(r[key] for r in rows) / step_s if have else None
    stale = [r["staleness"] for r in rows if is_number(r.get("staleness"))]
    out["staleness max"] = int(max(stale)) if stale else None
    return out


def run(config: CostConfig) -> CostResult:
    columns = run_columns(config.runs)
    names = column_names(columns, config.names, kind="dir")
    stats = [run_cost(load_run(c.paths[0], need_config=True)) for c in columns]
    fmts = {
        "teachers": "s",
        "# teachers": "d",
        "steps": "d",
        "device": "s",
        "devices": "d",
        "wall hours": ".4f",
    }
    fmts["device hours"] = ".4f"
    fmts.update({f"{p} %": ".1f" for p in (*PHASES, "other")})
    fmts.update({"step s (measured)": ".2f", "step s (ideal, one step off)": ".2f"})
    fmts.update({"engine idle %": ".1f", "trainer idle %": ".1f", "staleness max": "d"})
    fmts.update({"tokens/s mean": ".1f", "peak mem max (GB)": ".2f"})
    rows = [Row(label, tuple(s[label] for s in stats), fmt) for label, fmt in fmts.items()]
    devices = sorted({d for s in stats for d in s["peak"]})
    rows += [
        Row(f"peak mem {d} (GB)", tuple(s["peak"].get(d) for s in stats), ".2f") for d in devices
    ]
    notes = (
        "wall hours = Σ time_step_s; device hours = wall hours × devices; phase % of Σ time_step_s",
        "ideal step (one step off) = mean of max(rollout, scoring + update) + sync",
    )
    return CostResult(Table("Training cost", tuple(names), tuple(rows), notes=notes))

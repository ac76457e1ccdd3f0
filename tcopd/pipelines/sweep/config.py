"""Settings of ``tcopd sweep`` and the grid they describe.

A sweep is settings × seeds. A *setting* is one point of the grid: the λ setting (``--lambdas``,
repeatable) crossed with every other axis of the YAML ``grid:`` block (any ``tcopd train``
setting → a list of values), in the order given, the first axis varying slowest. Every run of a
setting shares the base train settings (the YAML ``train:`` block, then the train flags) and
differs only in its seed. Each run's train settings are resolved (recipe, toy paths) and checked
here, before anything starts; so is the final evaluation's ``EvalConfig``.

Names: a setting is ``key=value`` per axis joined by a space (``lambdas=1.5,-0.5 lr=0.001``); its
directory the same with ``__`` for the space and ``_`` for anything outside ``[A-Za-z0-9._,=+-]``.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcopd.config import build, field, field_defaults, read_yaml, to_dict
from tcopd.core.teachers import parse_lambdas
from tcopd.errors import ConfigError, TcopdError
from tcopd.pipelines.benchmarks import BENCHMARKS
from tcopd.pipelines.eval_config import EvalConfig
from tcopd.pipelines.train import TrainConfig, load_train_config
from tcopd.progress import Progress

# The final evaluation: SweepConfig field → EvalConfig field.
EVAL_FIELDS = {
    "eval_benchmark": "benchmark",
    "eval_data": "data",
    "eval_n": "n",
    "eval_max_tokens": "max_tokens",
    "eval_temperature": "temperature",
    "eval_top_p": "top_p",
    "eval_limit": "limit",
    "eval_seed": "seed",
}
# Train settings a sweep sets itself.
NOT_AXES = {"out": "the sweep's --out", "seed": "seeds"}


@dataclass(frozen=True)
class SweepConfig:
    out: str = field(help="Sweep directory: runs/, sweep.json, CSV tables, figures.")
    lambdas: list[str] = field(
        [],
        help="A λ setting of the grid (repeatable): 1 (OPD), 1.5 (G-OPD), 1.5,-0.5 (TC-OPD).",
    )
    grid: dict = field(
        {},
        help="More grid axes {train setting: [values]}, crossed with --lambdas "
        "(YAML, e.g. {lr: [0.001, 0.0005]}).",
    )
    settings: dict = field(
        {},
        help="Named settings {name: {train setting: value}} instead of a grid (YAML), for "
        "settings that differ in several keys at once (data, lambda_table, teachers).",
    )
    seeds: str | list[int] = field(
        "0", help="Training seeds, e.g. 0,1,2: every setting runs with each."
    )
    train: dict = field(
        {},
        help="Base train settings of every run (YAML block of `tcopd train` keys; the train flags "
        "override it).",
    )
    eval_benchmark: str | None = field(
        None, help=f"Benchmark of the final evaluation: {', '.join(BENCHMARKS)}."
    )
    eval_data: str | None = field(
        None, help="Prepared data file to evaluate on (with --eval: a local copy of it)."
    )
    eval_n: int | None = field(
        None, help="Samples per problem in the final evaluation (default: tcopd eval's 32)."
    )
    eval_max_tokens: int | None = field(
        None, help="Maximum new tokens per evaluation response (default: tcopd eval's)."
    )
    eval_temperature: float | None = field(None, help="Evaluation sampling temperature.")
    eval_top_p: float | None = field(None, help="Evaluation top-p.")
    eval_limit: int | None = field(None, help="Evaluate on the first N problems only.")
    eval_seed: int | None = field(None, help="Evaluation sampling seed (the same for every model).")
    eval_options: dict = field(
        {},
        help="Other `tcopd eval` settings of the final evaluation (YAML: EvalConfig keys, "
        "e.g. engine, dtype, token_budget).",
    )
    baseline: str | None = field(
        None,
        help="The setting the others are compared with: its name (lambdas=1) or, with one "
        "axis, its value (1). Default: the first setting.",
    )
    target: float | None = field(
        None,
        help="Rollout accuracy (0-1) for steps-to-target (default: the baseline's final "
        "rollout accuracy, mean over seeds).",
    )
    smooth: int = field(
        5, help="Trailing moving-average window (steps) of the rollout-accuracy curves."
    )
    bootstrap: int = field(10000, help="Bootstrap resamples of the paired differences.")
    bootstrap_seed: int = field(0, help="Seed of the bootstrap (same seed → same intervals).")
    devices: str | None = field(
        None,
        help="CUDA devices to spread runs over, one run per device, e.g. 0,1 (default: every "
        "visible GPU; without one, one run at a time).",
    )

    def __post_init__(self) -> None:
        if self.smooth < 1:
            raise ConfigError(f"--smooth must be at least 1, got {self.smooth}")
        if self.bootstrap < 100:
            raise ConfigError(f"--bootstrap must be at least 100 resamples, got {self.bootstrap}")
        if self.target is not None and not 0.0 <= self.target <= 1.0:
            raise ConfigError(
                f"--target is a rollout accuracy in [0, 1], got {self.target} (a percentage?)"
            )
        seed_list(self.seeds)  # a malformed list is refused here

    @property
    def seed_list(self) -> list[int]:
        return seed_list(self.seeds)


def seed_list(seeds: str | list[int]) -> list[int]:
    """``"0,1,2"`` or ``[0, 1, 2]`` → ``[0, 1, 2]``; non-integers and repeats are refused."""
    parts = seeds.split(",") if isinstance(seeds, str) else list(seeds)
    try:
        out = [int(str(p).strip()) for p in parts]
    except ValueError:
        raise ConfigError(f"--seeds {seeds!r} must be comma-separated integers, e.g. 0,1,2")
    if not out or len(set(out)) != len(out):
        raise ConfigError(f"--seeds {seeds!r} must list distinct seeds, e.g. 0,1,2")
    return out


def load_sweep_config(
    path: str | Path | None, flags: dict[str, Any], train_flags: dict[str, Any]
) -> SweepConfig:
    """YAML (optional), then the sweep's flags; the train flags go over the YAML's ``train:``."""
    values: dict[str, Any] = read_yaml(path) if path else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    base = values.get("train") or {}
    if not isinstance(base, dict):
        raise ConfigError("the sweep config's train: block must be a mapping of train settings")
    values["train"] = {**base, **{k: v for k, v in train_flags.items() if v is not None}}
    if "out" not in values:
        raise ConfigError("no sweep directory: pass --out DIR")
    return build(SweepConfig, values)


# ------------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Setting:
    """One grid point: its train settings ``values`` (axis → value), name and directory."""

    name: str
    dirname: str
    values: dict[str, Any]


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, (list, tuple)):
        return ",".join(_fmt(v) for v in value)
    return str(value)


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def normalize_lambdas(text: Any) -> str:
    """``"1.50, -0.5"`` → ``"1.5,-0.5"`` (names and comparisons do not depend on spelling)."""
    return ",".join(_number(x) for x in parse_lambdas(_fmt(text)))


def _dirname(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._,=+-]", "_", name.replace(" ", "__"))


def expand_grid(cfg: SweepConfig) -> list[Setting]:
    """The settings of the grid: λ settings × the YAML axes (first axis slowest), or the named
    ``settings`` as they are given."""
    if cfg.settings:
        if cfg.lambdas or cfg.grid:
            raise ConfigError("give named settings or a grid (--lambdas / grid:), not both")
        return _named_settings(cfg.settings)
    axes: list[tuple[str, list[Any]]] = []
    if cfg.lambdas:
        if "lambdas" in cfg.grid:
            raise ConfigError("λ settings are given twice: use --lambdas or grid: {lambdas: ...}")
        axes.append(("lambdas", list(cfg.lambdas)))
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, values in cfg.grid.items():
        if key in NOT_AXES:
            raise ConfigError(f"grid axis {key!r}: set by the sweep (use {NOT_AXES[key]})")
        if key not in train_fields:
            raise ConfigError(f"grid axis {key!r} is not a train setting (see tcopd train --help)")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid axis {key!r} needs a non-empty list of values")
        axes.append((key, list(values)))
    for key, _ in axes:
        if key in cfg.train:
            raise ConfigError(f"{key} is both a grid axis and a base train setting: drop one")
    settings: list[Setting] = []
    for combo in itertools.product(*(vals for _, vals in axes)):
        values = dict(zip((k for k, _ in axes), combo, strict=True))
        if "lambdas" in values:
            try:
                values["lambdas"] = normalize_lambdas(values["lambdas"])
            except TcopdError as e:
                raise ConfigError(f"setting lambdas={_fmt(values['lambdas'])}: {e}")
        name = " ".join(f"{k}={_fmt(v)}" for k, v in values.items()) or "base"
        settings.append(Setting(name, _dirname(name), values))
    seen: dict[str, str] = {}
    for s in settings:
        if s.dirname in seen:
            raise ConfigError(
                f"the grid holds the same setting twice: {seen[s.dirname]!r}, {s.name!r}"
            )
        seen[s.dirname] = s.name
    return settings


def _named_settings(named: dict) -> list[Setting]:
    """``{name: {train setting: value}}`` → settings in the given order (each key a train
    setting the sweep does not set itself; a setting's values override the base ``train:``)."""
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    settings: list[Setting] = []
    for name, values in named.items():
        if not isinstance(values, dict):
            raise ConfigError(f"setting {name!r} must map train settings to values, got {values!r}")
        for key in values:
            if key in NOT_AXES:
                raise ConfigError(
                    f"setting {name!r}: {key!r} is set by the sweep (use {NOT_AXES[key]})"
                )
            if key not in train_fields:
                raise ConfigError(
                    f"setting {name!r}: {key!r} is not a train setting (see tcopd train --help)"
                )
        values = dict(values)
        if "lambdas" in values:
            try:
                values["lambdas"] = normalize_lambdas(values["lambdas"])
            except TcopdError as e:
                raise ConfigError(f"setting {name!r}: {e}")
        settings.append(Setting(str(name), _dirname(str(name)), values))
    return settings


def find_baseline(settings: list[Setting], baseline: str | None) -> Setting:
    """The setting named ``baseline`` (or, with one axis, whose value is ``baseline``)."""
    if baseline is None:
        return settings[0]
    for s in settings:
        if s.name == baseline or (len(s.values) == 1 and _fmt(*s.values.values()) == baseline):
            return s
    if len(settings[0].values) == 1 and "lambdas" in settings[0].values:
        try:
            lam = normalize_lambdas(baseline)
            return next(s for s in settings if s.values["lambdas"] == lam)
        except (TcopdError, StopIteration):
            pass
    names = ", ".join(s.name for s in settings)
    raise ConfigError(f"--baseline {baseline!r} is not a setting of the grid ({names})")


# ------------------------------------------------------------------------ resolved run settings


def run_train_config(cfg: SweepConfig, setting: Setting, seed: int, run_dir: Path) -> TrainConfig:
    """The train settings of one run: base, then the setting's axes, then seed and directory."""
    for key in NOT_AXES:
        if key in cfg.train:
            raise ConfigError(f"train setting {key!r} is set by the sweep (use {NOT_AXES[key]})")
    values = {**cfg.train, **setting.values, "seed": seed, "out": str(run_dir / "train")}
    try:
        return load_train_config(None, values)
    except TcopdError as e:
        raise ConfigError(f"setting {setting.name}: {e}")


def check_train_config(
    train: TrainConfig, setting: Setting, progress: Progress | None
) -> TrainConfig:
    """Fill toy paths and check teachers and λ as ``tcopd train`` would, naming the setting."""
    from tcopd.pipelines.train.loop import check_inputs, resolve_toy  # torch: only when asked

    try:
        resolved = resolve_toy(train, progress)
        check_inputs(resolved)
    except TcopdError as e:
        raise ConfigError(f"setting {setting.name}: {e}")
    return resolved


def eval_values(cfg: SweepConfig) -> dict[str, Any]:
    """``EvalConfig`` keys of the final evaluation (no model, no output directory yet; the
    runner adds each run's template and device where these are not set here)."""
    values = {EVAL_FIELDS[k]: getattr(cfg, k) for k in EVAL_FIELDS if getattr(cfg, k) is not None}
    for key in ("models", "out", "from_samples"):
        if key in cfg.eval_options:
            raise ConfigError(f"eval_options: {key!r} is set by the sweep")
    values |= cfg.eval_options
    if "benchmark" not in values and "data" not in values:
        raise ConfigError("no final evaluation: pass --eval BENCH (e.g. toy) or --eval-data FILE")
    try:
        build(EvalConfig, {**values, "models": ["final-model"]})
    except TcopdError as e:
        raise ConfigError(f"final evaluation: {e}")
    return values


def identity(
    settings: list[Setting], seeds: list[int], trains: dict[str, TrainConfig], evals: dict[str, Any]
) -> dict[str, Any]:
    """What a restart must match: the settings, the seeds, each setting's resolved train
    settings (seed and directory aside) and the evaluation."""
    runs = {}
    for s in settings:
        d = to_dict(trains[s.name])
        d.pop("seed"), d.pop("out")
        runs[s.name] = d
    return {
        "settings": [{"name": s.name, "dir": s.dirname, "values": s.values} for s in settings],
        "seeds": seeds,
        "train": runs,
        "eval": evals,
    }


def identity_difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """The first way ``new`` differs from ``old`` (``None``: the same sweep), in words."""
    old_names = [s["name"] for s in old.get("settings", [])]
    new_names = [s["name"] for s in new["settings"]]
    added = [n for n in new_names if n not in old_names]
    dropped = [n for n in old_names if n not in new_names]
    if added:
        return f"setting {added[0]} is new (the sweep has {', '.join(old_names)})"
    if dropped:
        return f"setting {dropped[0]} is missing (the sweep has {', '.join(old_names)})"
    if old_names != new_names:
        return f"the settings are in another order (the sweep has {', '.join(old_names)})"
    if old.get("seeds") != new["seeds"]:
        return f"seeds were {_fmt(old.get('seeds'))}, now {_fmt(new['seeds'])}"
    defaults = field_defaults(TrainConfig)  # as identity() records them (to_dict)
    for name in new_names:
        was, now = old["train"].get(name, {}), new["train"][name]
        for key in sorted(set(was) | set(now)):
            before = was.get(key, defaults.get(key))  # a setting newer than the sweep: its default
            if before != now.get(key):
                return f"train setting {key} of {name} was {before!r}, now {now.get(key)!r}"
    was, now = old.get("eval", {}), new["eval"]
    for key in sorted(set(was) | set(now)):
        if was.get(key) != now.get(key):
            return f"evaluation setting {key} was {was.get(key)!r}, now {now.get(key)!r}"
    return None

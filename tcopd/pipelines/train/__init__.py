"""``tcopd train``: the TC-OPD loop on DeepSpeed.

Where things are: ``config.py`` (settings, recipes) → ``setup.py`` (models, engines) →
``loop.py`` (``run``: the loop, checkpoints via ``checkpointing.py``, evaluation via
``evaluate.py``) → ``step.py`` (one step as named phases: ``rollout.py``, ``grade.py``,
``score.py``, ``advantages.py``, ``update.py``, ``metrics.py``). The formulas are in
``tcopd/core``.

Importing this package is cheap (the CLI reads :class:`TrainConfig` to build its flags); the
loop and its heavy dependencies load on first use of ``run`` and friends.
"""

from typing import Any

from tcopd.pipelines.train.config import RECIPES, TrainConfig, load_train_config

_LOOP = ("run", "TrainResult", "load_resume_config", "resolve_toy")
__all__ = ["RECIPES", "TrainConfig", "load_train_config", *_LOOP]


def __getattr__(name: str) -> Any:
    if name in _LOOP:
        from tcopd.pipelines.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

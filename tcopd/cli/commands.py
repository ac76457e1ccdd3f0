"""Imports every subcommand module so that each registers itself on ``tcopd.cli.main.app``."""

from __future__ import annotations

from tcopd.cli import (  # noqa: F401
    analyze,
    demo,
    eval_cmd,
    prepare,
    score,
    serve_teacher,
    sweep,
    train,
)

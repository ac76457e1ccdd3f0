"""Imports every subcommand module so that each registers itself on ``tcopd.cli.main.app``."""

from __future__ import annotations

from tcopd.cli import analyze, demo, eval_cmd, prepare, score, sweep, train  # noqa: F401

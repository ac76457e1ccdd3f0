"""Imports every subcommand module so that each registers itself on ``tcopd.cli.main.app``."""

from __future__ import annotations

import importlib

SUBCOMMANDS = ("prepare", "score", "eval_cmd", "train", "analyze", "demo")

for _name in SUBCOMMANDS:
    try:
        importlib.import_module(f"tcopd.cli.{_name}")
    except ModuleNotFoundError as e:  # a subcommand not built yet in this checkout
        if e.name != f"tcopd.cli.{_name}":
            raise

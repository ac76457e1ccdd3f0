"""Benchmarks by name: the paper's (aime24, aime25, math500) and the toy worlds' test sets.

Above both the dataset loaders (:mod:`tcopd.runtime.data.datasets`) and the toy worlds
(:mod:`tcopd.runtime.toy`), which build their rows from the data room: so the name → rows
catalogue lives here, where `tcopd eval` (and the sweep and demo through it) reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tcopd.errors import DataError
from tcopd.runtime.data.datasets import load_prepared, load_source
from tcopd.runtime.data.io import read_rows
from tcopd.runtime.toy import ensure_toy, ensure_toy_multitask
from tcopd.runtime.toy.build import open_toy
from tcopd.runtime.toy.multitask import open_toy_multitask

BENCHMARKS = ("aime24", "aime25", "math500", "toy", "toy-code", "toy-multitask")


def _is_prepared(path: Path) -> bool:
    if path.is_dir():
        return False
    first = read_rows(path)[:1]
    return bool(first) and "prompt" in first[0][1] and "reward_model" in first[0][1]


def load_benchmark(name: str, from_path: str | Path | None = None) -> list[dict[str, Any]]:
    """Prepared-format rows of benchmark ``name``: aime24, aime25, math500, toy (toy math test set),
    toy-code, toy-multitask (the multi-task world's mixed math + code test set, rows with their
    ``domain``). ``from_path`` is a prepared file, or a local copy in the Hub's layout
    (aime/math500), or a toy world's directory (toy)."""
    if name == "toy-multitask":
        if from_path is not None and Path(from_path).is_file():
            return load_prepared(from_path)
        # A world already there is used as it is (shipped or rebuilt); none: install the default.
        world = (open_toy_multitask(from_path) if from_path is not None else None) or (
            ensure_toy_multitask(root=from_path)
        )
        return load_prepared(world.test_files["mixed"])
    if name in ("toy", "toy-code"):
        if from_path is not None and Path(from_path).is_file():  # a prepared copy of it
            return load_prepared(from_path)

        # A world already there is used as it is (whatever its seed, size or origin: a rebuilt
        # world is never replaced by the shipped one); none there: install the default.
        world = (open_toy(from_path) if from_path is not None else None) or ensure_toy(
            root=from_path
        )
        return load_prepared(world.test_files["math" if name == "toy" else "code"])
    if name not in ("aime24", "aime25", "math500"):
        raise DataError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    if from_path is not None and _is_prepared(Path(from_path)):
        return load_prepared(from_path)
    return load_source(name, from_path)

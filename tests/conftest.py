"""Shared test fixtures."""

from __future__ import annotations

import os

import pytest

# The CLI's rich consoles wrap at the terminal's width (80 when captured): a long temporary path
# (pytest-xdist adds popen-gwN/ to every one) would break across lines inside the text that
# tests look for. Wide enough for any path here; set before tcopd.cli creates its consoles.
os.environ["COLUMNS"] = "250"

# `make test` runs the suite on two workers (pytest-xdist, --dist loadfile: a module runs whole on
# one worker, so its module fixtures are built once). A worker takes the next module when it is
# free, so the longest modules go first: otherwise one of them, started last, keeps the suite
# waiting while the other worker idles. Seconds: `make test --durations`, 2 cores, 2026-12-07.
LONGEST_FIRST = (
    "test_lora.py",  # ~75 s: LoRA kill-and-resume under ZeRO 0 and 3, two ranks three times
    "test_gpu_check.py",  # ~60 s: the GPU check's driver and parts at --tiny size, 2 ranks twice
    "test_train_dist.py",  # ~55 s: torchrun, two ranks, four launches
    "test_train_toy.py",  # ~35 s: 20 toy TC-OPD steps against the 5-seed threshold
    "test_sweep.py",  # ~30 s: a sweep through real subprocesses, killed and restarted
    "test_rank_failures.py",  # ~28 s: two ranks twice, a failure on rank 1
    "test_train_guards.py",  # ~25 s: four tiny runs
    "test_train.py",
    "test_demo.py",
    "test_learning_gate.py",
    "test_scorer_dist.py",
    "test_contexts.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable


@pytest.fixture
def offline_hub(monkeypatch):
    """Make sure nothing reaches for the Hugging Face Hub (unreachable here).

    The libraries read these at import time too: patch their constants so that even a process
    that imported them earlier (another test) never tries the network.
    """
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)

"""Shared test fixtures."""

from __future__ import annotations

import pytest


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

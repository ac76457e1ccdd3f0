"""Without vLLM installed, asking for the vLLM engine is one clear error that says how to install it."""

from __future__ import annotations

import importlib.util

import pytest
from helpers_tiny import make_tiny_qwen3, make_tokenizer

from tcopd.errors import ModelError, TcopdError
from tcopd.runtime.generation.rollout import make_engine

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is not None, reason="vllm is installed"
)


def test_missing_vllm_says_how_to_install(tmp_path):
    model = make_tiny_qwen3(tmp_path, make_tokenizer(tmp_path), seed=0)
    with pytest.raises(TcopdError, match=r"pip install '\.\[vllm\]'"):
        make_engine("vllm", str(model))


def test_not_a_model_is_reported_before_vllm(tmp_path):
    with pytest.raises(ModelError):
        make_engine("vllm", str(tmp_path))

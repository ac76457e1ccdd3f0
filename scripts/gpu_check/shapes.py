"""Model shapes of the GPU check: Qwen3-4B's exact configuration, and the tiny CPU stand-in.

Qwen3-4B (config.json of Qwen/Qwen3-4B, written out here because the check never touches the
Hub): hidden 2560, 36 layers, 32 query heads and 8 key/value heads of dimension 128 (so the
attention width, 4096, is not the hidden size), MLP 9728, vocabulary 151,936, tied embeddings,
RoPE θ = 10⁶, 40,960 positions, RMSNorm ε = 10⁻⁶. About 4.02 B parameters (8.04 GB in bf16).
"""

from __future__ import annotations

from typing import Any

QWEN3_4B: dict[str, Any] = dict(
    vocab_size=151_936,
    hidden_size=2560,
    intermediate_size=9728,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40_960,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    hidden_act="silu",
    attention_bias=False,
)

# The same architecture at a size that runs in a second on two CPU cores.
TINY: dict[str, Any] = QWEN3_4B | dict(
    vocab_size=2048,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=4096,
)


def qwen3_config(tiny: bool, **overrides: Any):
    """A ``Qwen3Config`` of Qwen3-4B's shape (or :data:`TINY`), with ``overrides`` applied."""
    from transformers import Qwen3Config

    settings = dict(TINY if tiny else QWEN3_4B)
    settings.update(overrides)
    rope_theta = settings.pop("rope_theta")
    config = Qwen3Config(**settings)
    # transformers 5 keeps RoPE settings in ``rope_parameters``; older versions read ``rope_theta``.
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict):
        rope["rope_theta"] = rope_theta
    else:
        config.rope_theta = rope_theta
    return config


def build_model(config, device, dtype, seed: int = 0):
    """A random-weight ``Qwen3ForCausalLM`` built directly on ``device`` in ``dtype`` (eval mode)."""
    import torch
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise in the target dtype: no float32 copy of 4 B weights
    try:
        with torch.device(device):
            model = Qwen3ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())

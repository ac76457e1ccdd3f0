"""Loading models and tokenizers, and checking that every model shares the student's tokenizer.

A path is a local HF directory (``config.json`` + weights + tokenizer files) or a Hugging Face
Hub id (``owner/name``), which is passed to ``from_pretrained`` as-is. A LoRA adapter directory
(``adapter_config.json``, what ``tcopd train --lora`` checkpoints) stands for its base model
with the adapter merged in (:mod:`tcopd.runtime.models.lora`). Every failure is a
:class:`~tcopd.errors.ModelError` naming the path and what to do.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tcopd.errors import ConfigError, ModelError
from tcopd.runtime.models import lora

# transformers is imported inside the functions below: its Auto classes take ~1 s to import and
# every CLI command imports this module at start-up (through its pipeline's config).

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Mixed text that exercises words, digits, LaTeX, code, whitespace runs, non-ASCII and chat markers:
# two tokenizers that agree here almost surely agree everywhere that matters.
PROBE_TEXT = (
    "The answer is \\boxed{42}. Let x = 3.14; def f(n): return n ** 2  # café über 数学 🙂\n"
    "<|im_start|>user\nSolve 2 + 2 = ?<|im_end|>\n<think>\n</think>"
)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"``/``"fp32"``, ``"bfloat16"``/``"bf16"``, ``"float16"``/``"fp16"`` or a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is not supported: use float32, bfloat16 or float16")
    return _DTYPES[key]


def _source(path: str | Path, what: str) -> str:
    """The string to hand to ``from_pretrained``: an existing local directory or a Hub id."""
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelError(
                f"{what} {str(path)!r} is a file, not a model directory: pass the directory"
            )
        return str(p)
    text = str(path)
    if _HUB_ID.match(text) and not text.startswith((".", "~")):
        return text  # not local: try it as a Hub id
    raise ModelError(
        f"{what} {text!r} does not exist: pass a local HF model directory or a Hub id (owner/name)"
    )


def load_tokenizer(path: str | Path) -> Any:
    """``AutoTokenizer`` for a model directory or Hub id (an adapter directory without
    tokenizer files: its base model's)."""
    from transformers import AutoTokenizer

    adapter = lora.adapter_dir(path)
    if adapter is not None and not lora.has_tokenizer(adapter.path):
        return load_tokenizer(adapter.base)
    src = _source(path, "tokenizer path")
    try:
        return AutoTokenizer.from_pretrained(src)
    except Exception as e:  # transformers raises OSError, ValueError, ... for unusable inputs
        raise ModelError(
            f"cannot load a tokenizer from {str(path)!r} ({_first_line(e)}); it needs tokenizer files"
        ) from e


def load_config(path: str | Path) -> Any:
    """The model config (an adapter directory's: its base model's)."""
    from transformers import AutoConfig

    adapter = lora.adapter_dir(path)
    if adapter is not None:
        return load_config(adapter.base)
    src = _source(path, "model path")
    if Path(src).is_dir() and not (Path(src) / "config.json").is_file():
        raise ModelError(f"{str(path)!r} is not a Hugging Face model directory (no config.json)")
    try:
        return AutoConfig.from_pretrained(src)
    except Exception as e:
        raise ModelError(f"cannot read the model config of {str(path)!r} ({_first_line(e)})") from e


def load_causal_lm_config(path: str | Path) -> Any:
    """The config of a causal LM; ModelError if the directory holds another kind of model."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = load_config(path)
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not _custom_causal(config):
        raise ModelError(
            f"{str(path)!r} is not a causal language model ({type(config).__name__}); "
            "pass a decoder-only LM such as Qwen3"
        )
    return config


def _custom_causal(config: Any) -> bool:
    # remote-code models declare their class in auto_map
    return "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})


def load_causal_lm(
    path: str | Path,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
) -> torch.nn.Module:
    """A causal LM in eval mode on ``device``; ModelError if missing or not a causal LM.

    An adapter directory gives its base model with the adapter merged into the weights.
    """
    from transformers import AutoModelForCausalLM

    adapter = lora.adapter_dir(path)
    if adapter is not None:
        base = load_causal_lm(adapter.base, dtype, device, attn_implementation)
        return lora.merged(lora.attach(base, adapter)).eval()
    config = load_causal_lm_config(path)
    src = _source(path, "model path")
    torch_dtype = resolve_dtype(dtype)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        with _quiet_loading():
            model = AutoModelForCausalLM.from_pretrained(src, config=config, **kwargs)
    except ValueError as e:
        if "Unrecognized configuration class" in str(e):
            kind = type(config).__name__
            raise ModelError(
                f"{str(path)!r} is not a causal language model ({kind}); pass a decoder-only LM such as Qwen3"
            ) from e
        raise ModelError(f"cannot load the model {str(path)!r} ({_first_line(e)})") from None
    except Exception as e:
        raise ModelError(f"cannot load the model {str(path)!r} ({_first_line(e)})") from e
    model.eval()
    return model.to(device)


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No per-model "Loading weights" bars from transformers (the CLI draws its own progress)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def default_attn_implementation(device: torch.device) -> str | None:
    """``flash_attention_2`` on CUDA when the package is installed (padding-free packing), else HF's default."""
    import importlib.util

    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return None


def _specials(tok: Any) -> dict[str, Any]:
    out = {
        key: getattr(tok, key, None) for key in ("bos_token", "eos_token", "pad_token", "unk_token")
    }
    out["additional_special_tokens"] = sorted(
        map(str, getattr(tok, "all_special_tokens", []) or [])
    )
    return out


def check_same_tokenizer(student_tok: Any, other_tok: Any, name: str) -> None:
    """Refuse a tokenizer that differs from the student's (vocabulary size, special tokens, probe ids).

    Log-probs are only comparable token by token when both models split text identically and
    index the same vocabulary; a mismatch would silently produce garbage rewards.
    """
    a, b = len(student_tok), len(other_tok)
    if a != b:
        raise ModelError(
            f"tokenizer of {name!r} differs from the student's: vocabulary size {b} vs {a}; "
            "every teacher and the reference must use the student's tokenizer"
        )
    sa, sb = _specials(student_tok), _specials(other_tok)
    for key in sa:
        if sa[key] != sb[key]:
            raise ModelError(
                f"tokenizer of {name!r} differs from the student's: {key} {sb[key]!r} vs {sa[key]!r}; "
                "every teacher and the reference must use the student's tokenizer"
            )
    ia = student_tok(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    ib = other_tok(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    if ia != ib:
        pos = next(
            (i for i, (x, y) in enumerate(zip(ia, ib, strict=False)) if x != y),
            min(len(ia), len(ib)),
        )
        xa = ia[pos] if pos < len(ia) else "end"
        xb = ib[pos] if pos < len(ib) else "end"
        raise ModelError(
            f"tokenizer of {name!r} differs from the student's: probe text token {pos} is {xb} vs {xa}; "
            "every teacher and the reference must use the student's tokenizer"
        )


def max_positions(model_or_config: Any) -> int | None:
    """The model's maximum sequence length (``max_position_embeddings``), if it declares one."""
    config = getattr(model_or_config, "config", model_or_config)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def vocab_size(model: torch.nn.Module) -> int:
    """Rows of the input embedding: token ids must be below this."""
    emb = model.get_input_embeddings()
    return int(emb.weight.shape[0])


def disable_dropout(model: torch.nn.Module) -> list[str]:
    """Turn off every dropout of ``model``, in train mode too; returns what was on
    (``"module.attr=p"``), for the log.

    ``nn.Dropout*`` modules get ``p = 0`` (a LoRA branch's dropout among them); float module
    attributes named ``*dropout`` / ``*pdrop`` are set to 0 (HF attention passes
    ``self.attention_dropout`` to its kernel while training). The config is left as given.
    """
    changed = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            if module.p:
                changed.append(f"{name or 'model'}.p={module.p:g}")
                module.p = 0.0
            continue
        for attr, value in list(vars(module).items()):
            rate = type(value) is float and (attr.endswith("dropout") or attr.endswith("pdrop"))
            if rate and value:
                changed.append(f"{name or 'model'}.{attr}={value:g}")
                setattr(module, attr, 0.0)
    return changed


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


@contextlib.contextmanager
def quiet_hf_progress() -> Iterator[None]:
    """No transformers "Writing model shards" bars: tcopd reports its own progress, and those
    bars flood a piped log (one per save)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()

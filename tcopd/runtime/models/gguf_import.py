"""A GGUF file as a plain Hugging Face model: load, copy out of the quantizer, save, compare.

The only module that imports ``gguf`` (transformers' GGUF loader needs it and ``accelerate``;
both come with ``pip install 'tcopd[gguf]'``).

transformers reads a GGUF file itself (``from_pretrained(dir, gguf_file=name)``): it
dequantizes every tensor to float32 and builds the model its metadata describes, but marks the
model as quantized (``config.quantization_config``), so ``save_pretrained`` refuses it. The
weights are therefore copied, key for key (``strict=True``), into a fresh model built from the
same config without ``quantization_config``; that model saves like any other.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tcopd.errors import ConfigError, DataError, ModelError
from tcopd.runtime.models.loading import quiet_hf_progress

INSTALL_HINT = "pip install 'tcopd[gguf]'"
PACKAGES = ("gguf", "accelerate")


def require_packages(what: str) -> None:
    """ConfigError unless transformers' GGUF loader has the packages it needs."""
    if any(importlib.util.find_spec(p) is None for p in PACKAGES):
        raise ConfigError(f"{what} needs the gguf and accelerate packages: {INSTALL_HINT}")


@dataclass(frozen=True)
class GgufHeader:
    """What a GGUF file says about itself, read without loading a tensor."""

    path: Path
    architecture: str  # ``general.architecture``: llama, qwen2, gemma3, ...
    name: str | None  # ``general.name``
    tensors: int


def read_header(path: str | Path) -> GgufHeader:
    """The header of a GGUF file; DataError (one line) for a missing or unreadable file."""
    import gguf

    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"GGUF file {str(path)!r} does not exist: pass the path of a .gguf file")
    try:
        reader = gguf.GGUFReader(p, "r")
        arch = _field(reader, "general.architecture")
    except Exception as e:  # gguf raises ValueError, struct.error, IndexError, ... on garbage
        raise DataError(f"{str(path)!r} is not a readable GGUF file ({_first_line(e)})") from e
    if not arch:
        raise DataError(f"{str(path)!r} is not a model GGUF file (no general.architecture)")
    return GgufHeader(p, str(arch), _field(reader, "general.name"), len(reader.tensors))


def _field(reader: Any, key: str) -> Any:
    f = reader.get_field(key)
    return None if f is None else f.contents()


def load_gguf(header: GgufHeader) -> tuple[torch.nn.Module, Any]:
    """The dequantized float32 model and the tokenizer transformers builds from a GGUF file.

    ConfigError naming ``general.architecture`` when transformers cannot map it to a model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, name = str(header.path.resolve().parent), header.path.name
    try:
        with quiet_gguf_loading():
            model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
    except Exception as e:  # ValueError, KeyError, NotImplementedError, ...: all one line
        if "architecture" in str(e) or "Unrecognized configuration" in str(e):
            raise ConfigError(
                f"transformers {_transformers_version()} cannot read GGUF architecture "
                f"{header.architecture!r} ({name}); convert that model with its own tools"
            ) from e
        raise ModelError(f"cannot load {name} with transformers ({_first_line(e)})") from e
    model.eval()
    return model, tokenizer


@contextlib.contextmanager
def quiet_gguf_loading() -> Iterator[None]:
    """No transformers bars while loading: its "Loading weights" bar obeys
    :func:`quiet_hf_progress`, but the GGUF reader's "Converting and de-quantizing" bar is a bare
    ``tqdm`` (and tqdm reads ``TQDM_DISABLE`` only when first imported), so it is swapped out."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    bar = gguf_utils.tqdm
    gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        with quiet_hf_progress():
            yield
    finally:
        gguf_utils.tqdm = bar


def plain_copy(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """The same weights in a fresh model whose config has no ``quantization_config``.

    Every key must match (``strict=True``): a GGUF model that does not fit its own config is
    refused rather than saved with freshly initialised tensors.
    """
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    try:
        plain.load_state_dict(model.state_dict(), strict=True)
    except RuntimeError as e:
        raise ModelError(
            f"the GGUF model's weights do not fit a {type(plain).__name__} ({_first_line(e)})"
        ) from e
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain.to(dtype).eval()


def save_model_dir(model: torch.nn.Module, tokenizer: Any, out: Path) -> None:
    """config.json, safetensors weights, generation_config.json, tokenizer files (+ template)."""
    # save_pretrained unwraps the model through accelerate, which imports DeepSpeed when it is
    # installed; naming the accelerator (as tcopd.runtime.training.learner does) skips DeepSpeed's
    # "Setting accelerator to CPU" warning in the middle of our progress lines.
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    with quiet_hf_progress():
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)


def reload_plain(out: Path) -> tuple[torch.nn.Module, Any]:
    """``out`` as any user gets it: plain ``from_pretrained(out)`` (dtype as stored)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_hf_progress():
        model = AutoModelForCausalLM.from_pretrained(out)
        tokenizer = AutoTokenizer.from_pretrained(out)
    return model.eval(), tokenizer


@torch.no_grad()
def compare_logits(
    reference: torch.nn.Module, candidate: torch.nn.Module, ids_1T: torch.Tensor
) -> tuple[float, float]:
    """``(max_{t,v} |ref[t, v] - cand[t, v]|, max_{t,v} |ref[t, v]|)`` of the logits on ``ids_1T``.

    Both in float32: a bfloat16 candidate's logits are upcast, so the difference is the one a
    user of the saved directory sees, weight rounding and bfloat16 arithmetic included.
    """
    ref_TV = reference(input_ids=ids_1T).logits[0].float()
    cand_TV = candidate(input_ids=ids_1T).logits[0].float()
    return float((ref_TV - cand_TV).abs().max()), float(ref_TV.abs().max())


def parameter_count(model: torch.nn.Module) -> int:
    """Distinct parameters (a tied embedding counted once)."""
    return sum(p.numel() for p in model.parameters())


def versions() -> dict[str, str]:
    """The versions that decide how a GGUF file is read."""
    import gguf
    import transformers

    return {"transformers": transformers.__version__, "gguf": _dist_version("gguf", gguf)}


def _dist_version(name: str, module: Any) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return str(getattr(module, "__version__", "unknown"))


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__

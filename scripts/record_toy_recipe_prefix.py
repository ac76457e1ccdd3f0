"""Record the toy recipe's training prefixes: tests/fixtures/toy_recipe_prefix.json.

    .venv/bin/python scripts/record_toy_recipe_prefix.py [--steps K] [--rebuilt DIR]

tests/test_toy_recipe.py checks the recipe (tcopd/runtime/toy/build.py) against the shipped toy
world piece by piece in well under a minute. Its training check compares against this file: for
the student (from scratch) and for the expert and the anti-expert (each from a copy of the
*shipped* student, which is the recipe's student at the end of its training), the first K steps of
the recipe's own schedules — the loss of every step and a digest of the weights after them — and
the float stream they were computed on (torch CPU capability and processor).

The digests stand for the shipped world only on a float stream whose full rebuild reproduces the
shipped bytes. ``--rebuilt DIR`` (a world rebuilt on this machine: ``tcopd prepare toy --rebuild
--out DIR``) checks that and records the answer; tests/test_toy_full.py then asserts the shipped
bytes on this stream. Re-record after a deliberate change of the recipe (and re-ship the world,
scripts/ship_toy_world.py), or after a torch or transformers change that moved the float stream.
The tests import the functions below, so tests and recording share one code path.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import torch

from tcopd.runtime.toy import build
from tcopd.runtime.toy.shipped import SHIPPED_MANIFEST, SHIPPED_ROOT, sha256_file
from tcopd.runtime.toy.tokenizer import build_tokenizer
from tcopd.runtime.toy.training import new_model

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "toy_recipe_prefix.json"
SHIPPED = SHIPPED_ROOT / "toy"
SEED, SIZE = 0, "full"  # the shipped world's
STEPS = 40  # per model: ~0.15 s a step on one thread, ~20 s for the three prefixes
TIMED = ("table.json", "table.md")  # they carry the build's seconds, so every build differs


def float_stream() -> dict[str, str]:
    """What decides this process's float arithmetic, as far as the recipe is concerned: torch's
    CPU capability (its vectorised kernels) and the processor (the BLAS picks its kernels by it:
    an Intel Xeon and the AMD EPYC that built the shipped world, both AVX512, train different
    bytes)."""
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": cpu_name()}


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def state_digest(model) -> str:
    """sha256 of a model's weights: every state-dict entry in sorted key order, as its key, its
    shape and its contiguous float32 bytes (independent of file format and of dict order)."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to(torch.float32).contiguous()
        h.update(f"{key}:{tuple(t.shape)}\n".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def recipe_inputs() -> tuple[dict[str, Any], Any]:
    """The shipped world's corpora and tokenizer as ``_build`` makes them."""
    data = build.make_corpora(SEED, build.SETTINGS[SIZE])
    return data, build_tokenizer(build.tokenizer_texts(data))


def train_prefixes(data: dict[str, Any], tok, steps: int) -> dict[str, dict[str, Any]]:
    """The first ``steps`` steps of each model's schedule, on the build's thread count (two
    threads give other bytes): per model the loss of every step and the weights'
    :func:`state_digest` after them."""
    from transformers import AutoModelForCausalLM

    s = build.SETTINGS[SIZE]
    student = AutoModelForCausalLM.from_pretrained(SHIPPED / "student")
    starts = {
        "student": lambda: new_model(tok, s.model, SEED),
        "expert": lambda: copy.deepcopy(student),
        "anti_expert": lambda: copy.deepcopy(student),
    }
    out = {}
    with build.torch_threads(build.BUILD_THREADS):
        for name, start in starts.items():
            model = start()
            losses = build.train_toy_model(model, name, data["sft"], tok, s, SEED, stop_after=steps)
            out[name] = {"losses": losses, "digest": state_digest(model)}
    return out


def rebuild_differences(root: Path) -> list[str]:
    """The files of the world rebuilt under ``root`` whose bytes differ from the shipped world's;
    table.json is compared as its table without the build's timings (table.md, all timings and
    a copy of the table, is skipped)."""
    shipped = json.loads((SHIPPED / SHIPPED_MANIFEST).read_text())
    digests = {**shipped["files"], **shipped["data"]}
    differ = [
        rel for rel, d in digests.items() if rel not in TIMED and sha256_file(root / rel) != d
    ]
    if untimed_table(root) != untimed_table(SHIPPED):
        differ.append("table.json")
    return differ


def untimed_table(root: Path) -> dict[str, Any]:
    """The world's table.json without the build's timings (what a rebuild can reproduce)."""
    table = json.loads((root / "table.json").read_text())
    return {k: v for k, v in table.items() if k not in ("build_seconds", "train_seconds")}


def main(steps: int, rebuilt: Path | None) -> None:
    import transformers

    reproduces = None  # not checked
    if rebuilt is not None:
        manifest = json.loads((rebuilt / "toy.json").read_text())
        assert (manifest["origin"], manifest["seed"], manifest["size"]) == ("built", SEED, SIZE), (
            f"{rebuilt} is not a rebuild of the shipped world: {manifest}"
        )
        differ = rebuild_differences(rebuilt)
        reproduces = not differ
        print(f"rebuild in {rebuilt}: " + ("the shipped bytes" if reproduces else f"{differ}"))
    data, tok = recipe_inputs()
    record = {
        "about": "first steps of the toy recipe's training; scripts/record_toy_recipe_prefix.py",
        "float_stream": float_stream(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "rebuild_reproduces_shipped": reproduces,
        "steps": steps,
        "prefixes": train_prefixes(data, tok, steps),
    }
    FIXTURE.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {FIXTURE.relative_to(REPO)}: {record['float_stream']}, {steps} steps")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=STEPS, help="steps of each model's prefix")
    ap.add_argument("--rebuilt", type=Path, help="a world rebuilt on this machine, to compare")
    args = ap.parse_args()
    main(args.steps, args.rebuilt)

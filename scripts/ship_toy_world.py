"""Copy a built toy world into the package as the shipped one (a developer's tool).

    python scripts/ship_toy_world.py toy DIR             # DIR built by `tcopd prepare toy --rebuild`
    python scripts/ship_toy_world.py toy-multitask DIR   # `tcopd prepare toy --multitask --rebuild`

Writes tcopd/runtime/toy/shipped/<name>/ (models, tokenizer, table, shipped.json with a sha256
of every file and of the data's JSONL files), then installs it into a scratch directory to check
that the data regenerates to the same digests. Every number in docs/ is measured on the shipped
world: re-measure them after shipping a new one.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tcopd.runtime.toy import build, multitask
from tcopd.runtime.toy.shipped import SHIPPED_ROOT, export_shipped

WORLDS = {
    "toy": ("toy.json", build.MODEL_NAMES, build.ensure_toy),
    "toy-multitask": (multitask.MANIFEST, multitask.MODEL_NAMES, multitask.ensure_toy_multitask),
}


def main(name: str, world_dir: str) -> None:
    manifest_name, models, ensure = WORLDS[name]
    shipped = export_shipped(
        Path(world_dir), SHIPPED_ROOT / name, manifest_name=manifest_name, model_names=models
    )
    print(f"shipped {len(shipped['files'])} files, {len(shipped['data'])} data digests")
    with tempfile.TemporaryDirectory() as tmp:
        world = ensure(Path(tmp) / name)
        print(f"installed and verified in {tmp}: {world.root}")


if __name__ == "__main__":
    main(*sys.argv[1:3])

"""The shipped toy worlds: built once, installed everywhere as the same bytes.

A toy world built on two machines comes out different (tiny float differences in the build's SGD
grow into different models), so every number measured on "the toy world" would depend on the
machine. The package therefore carries the built worlds — weights, tokenizer, table — under
``tcopd/runtime/toy/shipped/<name>/`` with a ``shipped.json`` that lists a sha256 digest of every
file. Installing one copies those files, regenerates the data from the seed (pure Python
``random``: byte-identical on every machine, so it need not be shipped), and checks *every* digest,
the data's JSONL files included, before the world is renamed into place. A mismatch is one line
and leaves nothing behind.

Digests cover the JSONL copy of each data file, not the parquet one: parquet files carry the
writing library's version in their metadata, so their bytes differ between pyarrow releases while
their rows do not.

``export_shipped`` is the other direction, for the developer who rebuilds a world on purpose
(``scripts/ship_toy_world.py``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tcopd.errors import DataError
from tcopd.runtime.data.io import write_json

SHIPPED_ROOT = Path(__file__).parent / "shipped"
SHIPPED_MANIFEST = "shipped.json"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shipped_manifest(name: str, source: Path | None = None) -> dict[str, Any] | None:
    """The ``shipped.json`` of the shipped world ``name`` (``None`` when the package has none)."""
    path = (source or SHIPPED_ROOT / name) / SHIPPED_MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def shipped_for(
    name: str, seed: int, size: str, version: int, source: Path | None = None
) -> dict[str, Any] | None:
    """The shipped world ``name``'s manifest when it is this seed, size and build version."""
    ship = shipped_manifest(name, source)
    if ship is None:
        return None
    b = ship["build"]
    return ship if (b["seed"], b["size"], b["version"]) == (seed, size, version) else None


def shipped_table(name: str) -> dict[str, Any] | None:
    """The table the shipped world ``name`` was built with (``None`` when none is shipped)."""
    path = SHIPPED_ROOT / name / "table.json"
    return json.loads(path.read_text()) if path.is_file() else None


def export_shipped(
    world_root: Path,
    dest: Path,
    *,
    manifest_name: str,
    model_names: tuple[str, ...],
) -> dict[str, Any]:
    """Copy a built world's models and table into ``dest`` and write its ``shipped.json``.

    ``files`` lists what is shipped (model directories, table); ``data`` the digests of the data's
    JSONL files, which the installer regenerates and checks.
    """
    world_root, dest = Path(world_root), Path(dest)
    build = json.loads((world_root / manifest_name).read_text())
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shipped = [world_root / "table.json", world_root / "table.md"]
    for name in model_names:
        shipped += sorted(p for p in (world_root / name).iterdir() if p.is_file())
    files = {}
    for src in shipped:
        rel = src.relative_to(world_root).as_posix()
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / rel)
        files[rel] = sha256_file(src)
    data = {
        p.relative_to(world_root).as_posix(): sha256_file(p)
        for p in sorted((world_root / "data").glob("*.jsonl"))
    }
    manifest = {"build": build, "files": files, "data": data}
    write_json(dest / SHIPPED_MANIFEST, manifest)
    return manifest


def install_shipped(
    out: Path,
    name: str,
    write_data: Callable[[Path], None],
    *,
    source: Path | None = None,
) -> dict[str, Any]:
    """Fill ``out`` (a fresh temporary directory) with the shipped world ``name``; every digest
    checked. Returns the world manifest to write (the build's, with ``origin: shipped``).

    Raises :class:`DataError` naming the first file whose digest differs.
    """
    t0 = time.time()
    source = source or SHIPPED_ROOT / name
    shipped = shipped_manifest(name, source)
    if shipped is None:
        raise DataError(f"this tcopd has no shipped {name} world (looked in {source})")
    for rel, digest in shipped["files"].items():
        src = source / rel
        if not src.is_file():
            raise DataError(
                f"shipped {name} world: {rel} is missing from {source}; reinstall tcopd"
            )
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out / rel)
        _check(out / rel, digest, f"shipped {name} world: {rel} is damaged", "reinstall tcopd")
    write_data(out)
    for rel, digest in shipped["data"].items():
        _check(
            out / rel,
            digest,
            f"{name} world data: the generator no longer reproduces {rel}",
            "the data code changed since the world was shipped (rebuild and re-ship it)",
        )
    return {
        **shipped["build"],
        "origin": "shipped",
        "install_seconds": round(time.time() - t0, 2),
    }


def _check(path: Path, digest: str, what: str, fix: str) -> None:
    if not path.is_file():
        raise DataError(f"{what} (not written); {fix}")
    got = sha256_file(path)
    if got != digest:
        raise DataError(f"{what} (sha256 {got[:12]}…, expected {digest[:12]}…); {fix}")

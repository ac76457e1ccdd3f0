"""Keep the layering true: cli → pipelines → runtime → core (STYLE.md).

Walks every module's imports with ``ast`` (static: catches lazy imports inside functions too).
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "tcopd"
HEAVY_SINGLE_IMPORTER = {
    "vllm": "tcopd/runtime/generation/vllm_engine.py",
    "deepspeed": "tcopd/runtime/training/learner.py",
    "math_verify": "tcopd/runtime/evaluation/grading.py",
    "gguf": "tcopd/runtime/models/gguf_import.py",
    "peft": "tcopd/runtime/models/lora.py",
}
LAYERS = ["core", "runtime", "pipelines", "cli"]
# tcopd/runtime/ in rooms (docs/internals.md), lowest first: a room imports only itself and the
# rooms before it, so the toy worlds may use everything and data nothing else of the runtime.
ROOMS = ["data", "models", "training", "generation", "scoring", "evaluation", "toy"]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules():
    for p in sorted(PKG.rglob("*.py")):
        yield p.relative_to(PKG.parent).as_posix(), p


def test_core_is_pure_torch():
    allowed_third_party = {"torch"}
    for rel, p in _modules():
        if not rel.startswith("tcopd/core/"):
            continue
        for name in _imports(p):
            top = name.split(".")[0]
            if top == "tcopd":
                assert name.startswith(("tcopd.core", "tcopd.errors")), f"{rel} imports {name}"
            elif name.startswith("torch.distributed"):
                raise AssertionError(f"{rel} touches torch.distributed")
            else:
                import sys

                assert top in allowed_third_party or top in sys.stdlib_module_names, (
                    f"{rel} imports {name}"
                )


def test_layer_directions():
    for rel, p in _modules():
        parts = rel.split("/")
        if len(parts) < 3 or parts[1] not in LAYERS:
            continue
        mine = LAYERS.index(parts[1])
        for name in _imports(p):
            bits = name.split(".")
            if bits[0] == "tcopd" and len(bits) > 1 and bits[1] in LAYERS:
                assert LAYERS.index(bits[1]) <= mine, f"{rel} imports {name} (upward)"


def _all_imports(path: Path) -> set[str]:
    """Every module named by an import, including ``from a.b import c`` as ``a.b.c``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_runtime_is_in_rooms():
    runtime = PKG / "runtime"
    loose = sorted(p.name for p in runtime.glob("*.py") if p.name != "__init__.py")
    assert not loose, f"put these runtime modules in a room ({', '.join(ROOMS)}): {loose}"
    rooms = sorted(p.name for p in runtime.iterdir() if (p / "__init__.py").exists())
    assert rooms == sorted(ROOMS), (
        f"rooms on disk {rooms} != ROOMS {ROOMS} (update docs/internals.md)"
    )


def test_rooms_import_only_rooms_below():
    for rel, p in _modules():
        parts = rel.split("/")
        if parts[1] != "runtime" or len(parts) < 4:
            continue
        mine = ROOMS.index(parts[2])
        for name in _all_imports(p):
            bits = name.split(".")
            if bits[:2] == ["tcopd", "runtime"] and len(bits) > 2:
                assert bits[2] in ROOMS, f"{rel} imports {name}: not a room"
                assert ROOMS.index(bits[2]) <= mine, (
                    f"{rel} imports {name} (a room above {parts[2]})"
                )


def test_only_cli_imports_typer_and_rich():
    for rel, p in _modules():
        tops = {n.split(".")[0] for n in _imports(p)}
        if not rel.startswith("tcopd/cli/"):
            assert not tops & {"typer", "rich"}, f"{rel} imports typer/rich"


def test_heavy_dependencies_have_one_importer():
    for lib, owner in HEAVY_SINGLE_IMPORTER.items():
        importers = [rel for rel, p in _modules() if lib in {n.split(".")[0] for n in _imports(p)}]
        assert set(importers) <= {owner}, f"{lib} imported by {importers}, only {owner} may"


PIPELINES_MAX_LINES = 500  # STYLE.md: "pipelines under 500"
ANY_MODULE_MAX_LINES = 800  # STYLE.md: "a file past 800 lines is a design smell"


def test_module_sizes():
    too_long = []
    for rel, p in _modules():
        n = len(p.read_text().splitlines())
        limit = PIPELINES_MAX_LINES if rel.startswith("tcopd/pipelines/") else ANY_MODULE_MAX_LINES
        if n > limit:
            too_long.append(f"{rel}: {n} lines (limit {limit})")
    assert not too_long, "split these modules: " + "; ".join(too_long)

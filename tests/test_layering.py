"""Keep the layering true: cli → pipelines → runtime → core (STYLE.md).

Walks every module's imports with ``ast`` (static: catches lazy imports inside functions too).
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "tcopd"
HEAVY_SINGLE_IMPORTER = {
    "vllm": "tcopd/runtime/vllm_engine.py",
    "deepspeed": "tcopd/runtime/engine.py",
    "math_verify": "tcopd/runtime/grading.py",
    "gguf": "tcopd/runtime/gguf_import.py",
    "peft": "tcopd/runtime/lora.py",
}
LAYERS = ["core", "runtime", "pipelines", "cli"]


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

"""The toy world: a tokenizer, a math and a code domain, and three small Qwen3 models
(student, math expert, code anti-expert) trained on CPU in minutes, plus its table.

``ensure_toy(root=None, seed=0, force=False, size="full"|"small", progress=None) -> ToyWorld``
builds or reuses it; ``default_root()`` is under the user's cache (``$TCOPD_TOY_DIR`` overrides).
See :mod:`tcopd.runtime.toy.build` for the design and docs/prepare.md for the measured table.
"""

from tcopd.runtime.toy.build import SETTINGS, ToyWorld, default_root, ensure_toy, table_markdown

__all__ = ["SETTINGS", "ToyWorld", "default_root", "ensure_toy", "table_markdown"]

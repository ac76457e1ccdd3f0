"""The toy worlds, trained on CPU in minutes with their tables.

- Single-task: a tokenizer, a math and a code domain, and three small Qwen3 models (student, math
  expert, code anti-expert). ``ensure_toy(root=None, seed=0, force=False, size="full"|"small",
  progress=None) -> ToyWorld`` builds or reuses it; ``default_root()`` is under the user's cache
  (``$TCOPD_TOY_DIR`` overrides). See :mod:`tcopd.runtime.toy.build`.
- Multi-task (issue 17): the same two domains, a student weak on both, a math teacher and a code
  teacher. ``ensure_toy_multitask(...) -> ToyMultitaskWorld``, cached under
  ``~/.cache/tcopd/toy-multitask`` (``$TCOPD_TOY_MULTITASK_DIR`` overrides). See
  :mod:`tcopd.runtime.toy.multitask`.

docs/prepare.md has both measured tables.
"""

from tcopd.runtime.toy.build import SETTINGS, ToyWorld, default_root, ensure_toy, table_markdown
from tcopd.runtime.toy.multitask import ToyMultitaskWorld, ensure_toy_multitask

__all__ = [
    "SETTINGS",
    "ToyMultitaskWorld",
    "ToyWorld",
    "default_root",
    "ensure_toy",
    "ensure_toy_multitask",
    "table_markdown",
]

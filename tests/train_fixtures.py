"""A tiny training world for the train tests: student, two teachers, prepared prompts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from helpers_tiny import make_tiny_qwen3, make_tokenizer


@dataclass
class TinyWorld:
    student: Path
    expert: Path
    anti_expert: Path
    data: Path
    tokenizer: Path


def write_prepared(path: Path, n: int = 8, domains: tuple[str, ...] = ("math",)) -> Path:
    """``n`` arithmetic prompts in the prepared (verl + domain) row format, as JSONL."""
    rows = []
    for i in range(n):
        a, b = i % 7, (3 * i + 1) % 5
        rows.append(
            {
                "data_source": "tiny",
                "prompt": [{"role": "user", "content": f"what is {a} + {b} ?"}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": str(a + b)},
                "extra_info": {"split": "train", "index": i},
                "domain": domains[i % len(domains)],
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_world(
    root: Path, n_prompts: int = 8, domains: tuple[str, ...] = ("math",), **model_cfg
) -> TinyWorld:
    """Student and teachers are tiny random Qwen3 models (``model_cfg`` overrides their config)."""
    tok = make_tokenizer(root)
    return TinyWorld(
        student=make_tiny_qwen3(root / "student", tok, seed=0, **model_cfg),
        expert=make_tiny_qwen3(root / "expert", tok, seed=1, **model_cfg),
        anti_expert=make_tiny_qwen3(root / "anti", tok, seed=2, **model_cfg),
        data=write_prepared(root / "data.jsonl", n_prompts, domains),
        tokenizer=tok,
    )


def tiny_args(world: TinyWorld, out: Path, *extra: str) -> list[str]:
    """CLI arguments of a seconds-long tiny run (fp32, CPU, plain template)."""
    return [
        "train",
        "--student",
        str(world.student),
        "--expert",
        str(world.expert),
        "--anti-expert",
        str(world.anti_expert),
        "--lambdas",
        "1.5,-0.5",
        "--data",
        str(world.data),
        "--out",
        str(out),
        "--template",
        "plain",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--samples-per-prompt",
        "2",
        "--max-response-tokens",
        "6",
        "--lr",
        "1e-3",
        "--save-every",
        "1",
        "--device",
        "cpu",
        *extra,
    ]


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """``tcopd ARGS`` in this process: (exit code, stdout, stderr)."""
    from tcopd.cli.main import main

    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def full_and_killed_then_resumed(args, root: Path, capsys, kill_at: int = 3) -> tuple[Path, Path]:
    """Two run directories for a kill-and-resume test: ``args(out)`` (CLI arguments) run whole,
    and the same run SIGKILLed just before step ``kill_at``'s checkpoint (tests/kill_at_step.py,
    a process of its own: the crash) then resumed with ``tcopd train --resume``.

    The whole run and the resume run in this process (a resume restores weights, optimizer and
    RNG states from the checkpoint's files, whoever reads them); only the killed run needs a
    process to kill. Returns (full, killed)."""
    import os
    import subprocess
    import sys

    full, killed = root / "full", root / "killed"
    code, _, err = run_cli(args(full), capsys)
    assert code == 0, err[-3000:]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "TCOPD_DEBUG": "1"}
    kill = [sys.executable, str(Path(__file__).parent / "kill_at_step.py"), str(kill_at)]
    p = subprocess.run(kill + args(killed), env=env, capture_output=True)
    assert p.returncode == -9, p.stderr.decode()[-2000:]  # SIGKILL before that checkpoint
    latest = (killed / "checkpoints" / "latest").read_text().strip()
    assert latest == f"step-{kill_at - 1:06d}", latest
    code, _, err = run_cli(["train", "--resume", str(killed)], capsys)
    assert code == 0, err[-2000:]
    return full, killed

"""A sweep whose runs execute inside the test process instead of one subprocess each.

A sweep on CPU spends most of a tiny run starting Python, torch, transformers and DeepSpeed in
the run's subprocess (~6 s of a ~8 s run). Tests that check what a sweep *computes* (its grid,
run files, statistics, report, the demo's tables) run the same ``tcopd train`` / ``tcopd eval``
arguments in-process, through this stand-in for ``runner.run_cli``: the log gets the same
``$ tcopd ARGS`` line and the command's output, the exit code is the CLI's. The subprocess path
itself (the child launcher, output to the log, a killed sweep's children dying with it, resume)
stays covered by the sweep tests that run real subprocesses (tests/test_sweep.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tcopd.cli.main import main
from tcopd.pipelines.sweep import runner


def run_cli_here(
    args: list[str], log: Path, device: str | None, tick: Callable[[], None] | None = None
) -> int:
    """``runner.run_cli`` with the same contract, the command run by this process's CLI."""
    assert device is None, "in-process runs are CPU runs"
    with open(log, "a") as f:
        f.write(f"$ tcopd {' '.join(args)}\n")
        f.flush()
        with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            try:
                main(list(args))
                return 0
            except SystemExit as e:
                return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)


@contextlib.contextmanager
def runs_in_process() -> Iterator[None]:
    """Within the block, every sweep run (train, eval) executes in this process."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "run_cli", run_cli_here)
        yield

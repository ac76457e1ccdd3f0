"""``python kill_at_step.py N tcopd-args...``: run the CLI and SIGKILL the process when step N's
checkpoint is about to be written (the crash the resume test recovers from)."""

from __future__ import annotations

import os
import signal
import sys

from tcopd.cli.main import main
from tcopd.pipelines.train import checkpointing, loop

kill_at = int(sys.argv[1])
real_save = checkpointing.save


def save_or_die(tr, run_dir, step, *rest):
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(tr, run_dir, step, *rest)


loop.checkpointing.save = save_or_die  # loop calls checkpointing.save through the module
main(sys.argv[2:])

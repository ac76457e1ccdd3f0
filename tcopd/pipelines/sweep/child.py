"""``python -m tcopd.pipelines.sweep.child SWEEP_PID ARGS...``: ``tcopd ARGS...`` for one sweep run.

The same as ``python -m tcopd ARGS...``, except that the process first asks Linux to SIGKILL it
when the sweep that started it dies (``prctl(PR_SET_PDEATHSIG)``): a sweep killed mid-run must
not leave its training running on, writing into a run directory that the restarted sweep is
about to resume. Elsewhere the request is skipped (the CLI then outlives a killed sweep).
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with(parent_pid: int) -> None:
    """SIGKILL this process when its parent dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the sweep died before the request took effect
        os._exit(1)


if __name__ == "__main__":
    die_with(int(sys.argv[1]))
    sys.argv = ["tcopd", *sys.argv[2:]]
    runpy.run_module("tcopd", run_name="__main__", alter_sys=True)

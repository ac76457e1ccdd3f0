"""Run one part of the GPU check in this process and record its rows as it goes.

    python -m gpu_check.worker PART --result FILE [--opts JSON]

The driver (``gpu_check.driver``) starts one of these per part, so that an out-of-memory error
or a crash in one part is reported and the next part still runs. Rows are written to ``FILE``
(atomically) as soon as each is known: a part killed half-way keeps the rows it finished.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

PART_MODULES = {
    "tests": "gpu_check.part_tests",
    "scorer": "gpu_check.part_scorer",
    "step": "gpu_check.part_step",
    "dist": "gpu_check.part_dist",
    "vllm": "gpu_check.part_vllm",
    "ahead": "gpu_check.part_ahead",
}


class Recorder:
    """Collects a part's rows (``check``, ``status``, ``result``, ``note``, numbers) into a JSON file."""

    def __init__(self, path: str | Path, part: str):
        self.path = Path(path)
        self.part = part
        self.rows: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {}

    def row(self, check: str, status: str, result: str, note: str = "", **data: Any) -> None:
        """Record one row; status is ok, skipped, failed or oom."""
        self.rows = [r for r in self.rows if r["check"] != check]
        self.rows.append(
            {
                "part": self.part,
                "check": check,
                "status": status,
                "result": result,
                "note": note,
                "data": data,
            }
        )
        self.flush()
        print(
            f"[{self.part}] {check}: {status}: {result}" + (f" ({note})" if note else ""),
            flush=True,
        )

    def set_info(self, **info: Any) -> None:
        self.info.update(info)
        self.flush()

    def flush(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"rows": self.rows, "info": self.info}, indent=2, default=str))
        os.replace(tmp, self.path)


def _simulate(part: str) -> None:
    """Test hook: ``GPU_CHECK_SIMULATE=PART:crash|oom|hang`` makes that part fail that way."""
    spec = os.environ.get("GPU_CHECK_SIMULATE", "")
    name, _, how = spec.partition(":")
    if name != part:
        return
    if how == "crash":
        raise RuntimeError(f"simulated crash in part {part}")
    if how == "oom":
        import torch

        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB (simulated)")
    if how == "hang":
        import time

        time.sleep(3600)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("part", choices=sorted(PART_MODULES))
    ap.add_argument("--result", required=True)
    ap.add_argument("--opts", default="{}", help="JSON options from the driver (tiny, out, ...)")
    a = ap.parse_args(argv)
    rec = Recorder(a.result, a.part)
    rec.flush()
    module = importlib.import_module(PART_MODULES[a.part])
    try:
        _simulate(a.part)
        module.run(json.loads(a.opts), rec)
    except Exception:
        traceback.print_exc()
        sys.stdout.flush()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Part 1: the suite's GPU-marked tests (``pytest -m gpu``), on the test files that have any.

Only those files are collected: collecting the whole suite would import every optional
dependency of every test module, which the GPU machine need not have.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROWS = ["gpu-marked tests"]
CHECK = ROWS[0]


def gpu_test_files(tests_dir: Path) -> list[Path]:
    return sorted(
        p for p in tests_dir.glob("test_*.py") if "mark.gpu" in p.read_text(encoding="utf-8")
    )


def summarize(junit_xml: Path) -> dict[str, Any]:
    """Counts and names from a JUnit XML report: passed, failed (incl. errors), skipped + first reason."""
    out: dict[str, Any] = {
        "passed": 0,
        "failed": 0,
        "skipped": 0,
        "failures": [],
        "skip_reason": "",
    }
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            out["failed"] += 1
            out["failures"].append(name)
        elif "skipped" in kinds:
            out["skipped"] += 1
            if not out["skip_reason"]:
                out["skip_reason"] = case.find("skipped").get("message", "")  # type: ignore[union-attr]
        else:
            out["passed"] += 1
    return out


def run(opts: dict[str, Any], rec) -> None:
    repo, out = Path(opts["repo"]), Path(opts["out"])
    if importlib.util.find_spec("pytest") is None:
        rec.row(
            CHECK,
            "skipped",
            "pytest is not installed",
            "bring its wheel in wheels/ (see docs/gpu.md)",
        )
        return
    files = gpu_test_files(repo / "tests")
    if not files:
        rec.row(CHECK, "skipped", "no gpu-marked tests in tests/", "")
        return
    junit = out / "gpu_tests.xml"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-m",
        "gpu",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        *[str(f.relative_to(repo)) for f in files],
    ]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(
        cmd, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    print(proc.stdout, flush=True)
    if not junit.is_file():
        tail = proc.stdout.strip().splitlines()[-1:] or ["no output"]
        rec.row(CHECK, "failed", f"pytest exited {proc.returncode} without a report", tail[0][:200])
        return
    s = summarize(junit)
    counts = f"{s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped"
    where = ", ".join(f.name for f in files)
    if s["failed"] or proc.returncode not in (0, 5):
        rec.row(
            CHECK,
            "failed",
            counts,
            "failed: " + ", ".join(s["failures"][:4])
            if s["failures"]
            else f"pytest exit {proc.returncode}",
            **s,
        )
    elif s["passed"] == 0:
        rec.row(CHECK, "skipped", counts, f"{s['skip_reason'] or 'none selected'} ({where})", **s)
    else:
        rec.row(CHECK, "ok", counts, where, **s)

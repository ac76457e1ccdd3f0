"""The GPU readiness check's driver: environment, wheels, one subprocess per part, the table.

Standard library only (it must start on a machine that lacks half the dependencies). Steps:

1. probe the interpreter: Python, torch, CUDA and the card, and which of transformers, DeepSpeed,
   vLLM, flash-attn, Triton, pytest are installed;
2. if ``wheels/`` holds wheels of missing distributions, ``pip install --no-index --no-deps
   --target`` them into a private directory put on ``PYTHONPATH`` (the machine has no network);
   tcopd itself is imported from the repository (``PYTHONPATH``), not installed;
3. run each part (tests, scorer, step, dist, vllm) as ``python -m gpu_check.worker PART`` in its
   own process group, with a time limit ``min(part limit, what is left of --budget-s)``; a crash, an
   out-of-memory error or a timeout fills that part's missing rows with the reason, and the next
   part runs;
4. write ``gpu_check.log`` (everything), ``<part>.log``, ``results.json`` and ``table.md`` under
   ``--out`` (default ``$OUT``, else ``./gpu_check_out``), and print the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from gpu_check import part_ahead, part_dist, part_scorer, part_step, part_tests, part_vllm

REPO = Path(__file__).resolve().parents[2]
PARTS = {
    "tests": part_tests,
    "scorer": part_scorer,
    "step": part_step,
    "dist": part_dist,
    "vllm": part_vllm,
    "ahead": part_ahead,
}
# 990 s in all; --budget-s (600) caps the whole, so a late part gets what is left (docs/gpu.md).
LIMITS_S = {"tests": 60, "scorer": 150, "step": 240, "dist": 120, "vllm": 180, "ahead": 240}
NEEDS = {
    "tests": ["torch", "pytest"],
    "scorer": ["torch", "transformers"],
    "step": ["torch", "transformers", "deepspeed", "pyyaml"],
    "dist": ["torch", "transformers", "deepspeed", "pyyaml"],
    "vllm": [],
    "ahead": ["torch", "transformers", "deepspeed", "pyyaml"],
}
GPU_ONLY = {"scorer", "step"}  # at full size; with --tiny they run on CPU too
# dist needs 2 CUDA devices (part_dist.skip_reason); with --tiny it runs on CPU over gloo.
# Distribution name → what the environment rows call it.
PROBED = {
    "torch": "torch",
    "transformers": "transformers",
    "deepspeed": "DeepSpeed",
    "vllm": "vLLM",
    "flash-attn": "flash-attn",
    "triton": "Triton",
    "pytest": "pytest",
    "pyyaml": "PyYAML",
    "safetensors": "safetensors",
}
# Distributions whose wheel replaces (shadows) an installed copy of another version.
PINNED = {"transformers", "tokenizers", "huggingface-hub", "deepspeed"}
# The machine's CUDA stack (and the numpy its torch was built against) stays as it is.
NEVER_INSTALL = re.compile(r"^(torch|triton|nvidia-.*|numpy)$")
STATUSES = ("ok", "skipped", "missing", "failed", "oom", "timeout")


# ------------------------------------------------------------------------------------- logging
class Log:
    """Everything goes to ``gpu_check.log``; ``say`` also prints."""

    def __init__(self, path: Path):
        self.f = open(path, "a", encoding="utf-8")
        self.lock = threading.Lock()

    def write(self, text: str) -> None:
        with self.lock:
            self.f.write(text)
            self.f.flush()

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.write(line + "\n")


# ---------------------------------------------------------------------------------- environment
PROBE = r"""
import importlib.metadata as md, json, platform, sys
names = json.loads(sys.argv[1])
out = {"python": platform.python_version(), "executable": sys.executable, "dists": {}}
for n in names:
    try:
        out["dists"][n] = md.version(n)
    except md.PackageNotFoundError:
        out["dists"][n] = None
try:
    import torch
    out["torch_cuda"] = torch.version.cuda
    out["cuda"] = torch.cuda.is_available()
    if out["cuda"]:
        p = torch.cuda.get_device_properties(0)
        out["gpu"] = p.name
        out["gpu_gb"] = p.total_memory / 1e9
        out["gpus"] = torch.cuda.device_count()
        out["bf16"] = torch.cuda.is_bf16_supported()
except Exception as e:
    out["torch_error"] = f"{type(e).__name__}: {e}"
print("PROBE" + json.dumps(out))
"""


def probe(python: str, names: list[str], env: dict[str, str], log: Log) -> dict[str, Any]:
    proc = subprocess.run(
        [python, "-c", PROBE, json.dumps(names)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    log.write(proc.stdout + proc.stderr)
    for line in proc.stdout.splitlines():
        if line.startswith("PROBE"):
            return json.loads(line[5:])
    raise RuntimeError(f"could not probe {python}: {proc.stderr.strip()[-400:]}")


def wheel_dist(filename: str) -> tuple[str, str]:
    """``(normalised distribution name, version)`` of a wheel file name (PEP 427 / PEP 503)."""
    name, version = filename.split("-")[:2]
    return re.sub(r"[-_.]+", "-", name).lower(), version


def wheels_to_install(wheels: list[str], installed: dict[str, str | None]) -> list[str]:
    """The wheel files to install: missing distributions, and pinned ones at another version.

    ``installed`` maps normalised distribution names to their version (None: not installed).
    torch, Triton, numpy and NVIDIA's libraries are never touched. One wheel per distribution
    (the highest version string if several).
    """
    chosen: dict[str, tuple[str, str]] = {}
    for w in sorted(wheels):
        dist, version = wheel_dist(Path(w).name)
        if NEVER_INSTALL.match(dist):
            continue
        have = installed.get(dist)
        if have is None or (dist in PINNED and have != version):
            chosen[dist] = (version, w)
    return [w for _, w in chosen.values()]


def install_wheels(
    python: str, wheel_dir: Path, target: Path, env: dict[str, str], log: Log
) -> dict[str, Any]:
    """Install what is missing from ``wheel_dir`` into ``target`` (no index, no dependency resolution)."""
    wheels = [str(p) for p in sorted(wheel_dir.glob("*.whl"))] if wheel_dir.is_dir() else []
    if not wheels:
        return {"status": "skipped", "result": f"no wheels in {wheel_dir}", "installed": []}
    info = probe(python, sorted({wheel_dist(Path(w).name)[0] for w in wheels}), env, log)
    todo = wheels_to_install(wheels, info["dists"])
    if not todo:
        return {
            "status": "ok",
            "result": f"{len(wheels)} wheels, all already installed",
            "installed": [],
        }
    target.mkdir(parents=True, exist_ok=True)
    cmd = [
        python,
        "-m",
        "pip",
        "install",
        "--no-index",
        "--no-deps",
        "--upgrade",
        "--target",
        str(target),
        *todo,
    ]
    log.say(f"installing {len(todo)} wheels into {target}")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    log.write("$ " + " ".join(cmd) + "\n" + proc.stdout + proc.stderr)
    names = [Path(w).name for w in todo]
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {
            "status": "failed",
            "result": f"pip install failed (exit {proc.returncode})",
            "note": tail[:200],
            "installed": [],
        }
    return {
        "status": "ok",
        "result": f"installed {len(todo)} of {len(wheels)} wheels",
        "note": ", ".join(names)[:300],
        "installed": names,
    }


def env_rows(info: dict[str, Any], wheels: dict[str, Any]) -> list[dict[str, Any]]:
    d = info.get("dists", {})
    rows = [_row("env", "python", "ok", info.get("python", "?"), info.get("executable", ""))]
    torch_v = d.get("torch")
    if torch_v is None or "torch_error" in info:
        rows.append(
            _row(
                "env",
                "torch",
                "missing" if torch_v is None else "failed",
                "not importable",
                info.get("torch_error", ""),
            )
        )
    else:
        rows.append(_row("env", "torch", "ok", torch_v, f"CUDA {info.get('torch_cuda')}"))
    if info.get("cuda"):
        rows.append(
            _row(
                "env",
                "GPU",
                "ok",
                f"{info['gpu']}, {info['gpu_gb']:.0f} GB",
                f"{info['gpus']} visible, bf16 {info['bf16']}",
            )
        )
    else:
        rows.append(
            _row(
                "env",
                "GPU",
                "missing",
                "no CUDA device",
                "GPU-only checks are skipped or run at --tiny size on CPU",
            )
        )
    for dist in ("transformers", "deepspeed", "vllm", "flash-attn", "triton", "pytest"):
        v = d.get(dist)
        rows.append(_row("env", PROBED[dist], "ok" if v else "missing", v or "not installed", ""))
    rows.append(_row("env", "wheels", wheels["status"], wheels["result"], wheels.get("note", "")))
    return rows


def _row(
    part: str, check: str, status: str, result: str, note: str = "", **data: Any
) -> dict[str, Any]:
    return {
        "part": part,
        "check": check,
        "status": status,
        "result": result,
        "note": note,
        "data": data,
    }


# ---------------------------------------------------------------------------------- parts
def run_part(
    part: str,
    python: str,
    opts: dict[str, Any],
    env: dict[str, str],
    limit_s: float,
    out: Path,
    log: Log,
) -> dict[str, Any]:
    """Run one part in its own process group; ``{rows, info, status, rc, seconds, error}``."""
    result = out / f"{part}.json"
    result.unlink(missing_ok=True)
    cmd = [
        python,
        "-m",
        "gpu_check.worker",
        part,
        "--result",
        str(result),
        "--opts",
        json.dumps(opts),
    ]
    part_log = open(out / f"{part}.log", "w", encoding="utf-8")
    log.write(f"\n===== part {part} (limit {limit_s:.0f} s) =====\n$ {' '.join(cmd)}\n")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    tail: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            part_log.write(line)
            log.write(line)
            tail.append(line)
            del tail[:-60]
            if line.startswith(f"[{part}] "):
                print("  " + line.rstrip(), flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        rc = proc.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: pytest's or vLLM's children too
        rc = proc.wait()
    reader.join(timeout=10)
    part_log.close()
    seconds = time.perf_counter() - t0
    data = json.loads(result.read_text()) if result.is_file() else {"rows": [], "info": {}}
    text = "".join(tail)
    if timed_out:
        status, error = "timeout", f"hit its {limit_s:.0f} s limit"
    elif rc == 0:
        status, error = "ok", ""
    elif "OutOfMemoryError" in text or "CUDA out of memory" in text:
        status, error = "oom", "out of GPU memory: " + _last_error(text)
    elif rc == -signal.SIGKILL:
        status, error = "failed", "killed (SIGKILL): host out of memory?"
    else:
        status, error = "failed", f"exit {rc}: {_last_error(text)}"
    rows = fill_missing(part, data["rows"], status, error)
    return {
        "rows": rows,
        "info": data.get("info", {}),
        "status": status,
        "rc": rc,
        "seconds": seconds,
        "error": error,
    }


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", ln) or ln.startswith(
            ("RuntimeError", "AssertionError")
        ):
            return ln[:240]
    return (lines[-1] if lines else "no output")[:240]


def fill_missing(
    part: str, rows: list[dict[str, Any]], status: str, error: str
) -> list[dict[str, Any]]:
    """Every expected row of ``part``, in order; rows the part never wrote carry the reason."""
    by_check = {r["check"]: r for r in rows}
    out = []
    for check in PARTS[part].ROWS:
        if check in by_check:
            out.append(by_check.pop(check))
        else:
            st = status if status in ("timeout", "oom") else "failed"
            why = error or "the part ended without reporting it"
            out.append(_row(part, check, st, "not measured", f"part {part}: {why}"))
    return out + list(by_check.values())


def skipped_part(part: str, reason: str, note: str = "") -> dict[str, Any]:
    rows = [_row(part, check, "skipped", reason, note) for check in PARTS[part].ROWS]
    return {
        "rows": rows,
        "info": {},
        "status": "skipped",
        "rc": None,
        "seconds": 0.0,
        "error": reason,
    }


# ---------------------------------------------------------------------------------- report
def table(rows: list[dict[str, Any]]) -> str:
    def cell(s: Any) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = ["| part | check | result | status | note |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['part']} | {cell(r['check'])} | {cell(r['result'])} | {r['status']} | {cell(r['note'])} |"
        for r in rows
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="scripts/gpu_check.sh",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--tiny", action="store_true", help="every part at a tiny shape (runs on CPU in seconds)"
    )
    ap.add_argument(
        "--budget-s",
        type=float,
        default=600.0,
        help="wall-clock budget of all parts together (default 600)",
    )
    ap.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}"
    )
    ap.add_argument(
        "--part-limit",
        action="append",
        default=[],
        metavar="PART=S",
        help="override one part's time limit",
    )
    ap.add_argument(
        "--out", default=None, help="output directory (default: $OUT, else ./gpu_check_out)"
    )
    ap.add_argument(
        "--wheels", default=str(REPO / "wheels"), help="directory of wheels to install when missing"
    )
    ap.add_argument(
        "--deps-dir", default=None, help="where wheels are installed (default: a temp dir)"
    )
    ap.add_argument("--no-install", action="store_true", help="never pip-install from --wheels")
    ap.add_argument(
        "--vllm-python", default=None, help="interpreter for the vllm part (default: this one)"
    )
    ap.add_argument(
        "--tokens", type=int, default=None, help="scorer response length (default 16384; tiny 512)"
    )
    ap.add_argument(
        "--step-lengths",
        default=None,
        help="training-step response lengths, e.g. 8192,6144,4096,2048",
    )
    ap.add_argument(
        "--optimizer-offload",
        choices=["auto", "on", "off"],
        default="auto",
        help="ZeRO-Offload of AdamW state in the step (auto: on below 120 GB of GPU memory)",
    )
    ap.add_argument(
        "--cpu", action="store_true", help="run on CPU even if CUDA is there (with --tiny)"
    )
    a = ap.parse_args(argv)
    a.parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    unknown = [p for p in a.parts if p not in PARTS]
    if unknown:
        ap.error(f"unknown part(s) {', '.join(unknown)}: choose from {', '.join(PARTS)}")
    a.limits = dict(LIMITS_S)
    for item in a.part_limit:
        name, _, secs = item.partition("=")
        if name not in PARTS or not secs:
            ap.error(
                f"--part-limit {item!r}: expected PART=SECONDS with PART in {', '.join(PARTS)}"
            )
        a.limits[name] = float(secs)
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    t_start = time.perf_counter()
    out = Path(a.out or os.environ.get("OUT") or "gpu_check_out").resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.log").unlink(missing_ok=True)
    log = Log(out / "gpu_check.log")
    python = sys.executable
    log.say(
        f"gpu_check: {'--tiny, ' if a.tiny else ''}budget {a.budget_s:.0f} s, parts {','.join(a.parts)}, out {out}"
    )
    log.write(f"argv: {sys.argv}\nhost: {platform.node()} {platform.platform()}\n")

    deps = (
        Path(a.deps_dir)
        if a.deps_dir
        else Path(os.environ.get("TMPDIR", "/tmp")) / "tcopd-gpu-check-deps"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "scripts"), str(REPO), str(deps)]
        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env.setdefault("DS_BUILD_OPS", "0")  # DeepSpeed: never compile C++/CUDA ops at import
    env["PYTHONUNBUFFERED"] = "1"

    if a.no_install:
        wheels = {"status": "skipped", "result": "--no-install", "installed": []}
    else:
        wheels = install_wheels(python, Path(a.wheels), deps, env, log)
    info = probe(python, list(PROBED), env, log)
    results: dict[str, Any] = {
        "tiny": a.tiny,
        "budget_s": a.budget_s,
        "env": info,
        "wheels": wheels,
        "parts": {},
    }
    rows = env_rows(info, wheels)
    for r in rows:
        log.say(f"  [env] {r['check']}: {r['status']}: {r['result']}")
    have = {k for k, v in info.get("dists", {}).items() if v}
    cuda = bool(info.get("cuda")) and not a.cpu
    gpus = int(info.get("gpus") or 0) if cuda else 0

    opts: dict[str, Any] = {
        "tiny": a.tiny,
        "repo": str(REPO),
        "out": str(out),
        "cpu": a.cpu,
        "tokens": a.tokens,
        "step_lengths": a.step_lengths.split(",") if a.step_lengths else None,
        "optimizer_offload": a.optimizer_offload,
    }
    for part in PARTS:
        if part not in a.parts:
            continue
        left = a.budget_s - (time.perf_counter() - t_start)
        missing = [d for d in NEEDS[part] if d not in have]
        if missing:
            res = skipped_part(
                part, f"missing: {', '.join(missing)}", "bring wheels in wheels/ (docs/gpu.md)"
            )
        elif part in GPU_ONLY and not cuda and not a.tiny:
            res = skipped_part(
                part, "no CUDA device", "at Qwen3-4B size this needs a GPU; --tiny runs it on CPU"
            )
        elif part == "dist" and part_dist.skip_reason(gpus, a.tiny):
            res = skipped_part(
                part,
                part_dist.skip_reason(gpus, a.tiny) or "",
                "2 ranks over NCCL, one GPU each; --tiny runs it on CPU over gloo",
            )
        elif left < 15:
            res = skipped_part(part, "global budget spent", f"--budget-s {a.budget_s:.0f}")
        else:
            limit = min(a.limits[part], left)
            part_python = a.vllm_python if part in ("vllm", "ahead") and a.vllm_python else python
            log.say(f"part {part} (limit {limit:.0f} s)")
            res = run_part(part, part_python, dict(opts, limit_s=limit), env, limit, out, log)
            log.say(
                f"part {part}: {res['status']} in {res['seconds']:.1f} s"
                + (f" ({res['error']})" if res["error"] else "")
            )
        results["parts"][part] = {k: v for k, v in res.items() if k != "rows"}
        rows += res["rows"]
    results["rows"] = rows
    results["wall_s"] = time.perf_counter() - t_start
    text = table(rows)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    log.say(
        "\n"
        + text
        + f"\n\nwall time {results['wall_s']:.0f} s; full log, results.json and table.md in {out}"
    )
    bad = [r for r in rows if r["status"] in ("failed", "timeout")]
    return 1 if bad else 0

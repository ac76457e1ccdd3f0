"""Part: the first multi-GPU run — 2 steps of ``tcopd train`` on 2 ranks, DeepSpeed ZeRO-2, NCCL.

The test suite's tiny world (tests/train_fixtures.py: a random tiny Qwen3 student, two teachers,
8 prompts; float32) is written to ``<out>/dist-run``, then

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m gpu_check.part_dist train ...

runs ``tcopd train --zero-stage 2 --steps 2 --device cuda`` (``cpu`` under ``--tiny`` without two
GPUs). Each rank runs tcopd's own CLI (``tcopd.cli.main.main``) in-process; the only addition is
that it prints, as ``GPU_CHECK_DIST {json}`` lines, what tcopd itself decided: the process
group's backend and the rank's device right after ``init_distributed``, and the digest of the
rank's full weights (``loop.weights_digest``, the one dist_train_script.py prints) after the
trainer is built and when ``run`` returns. Nothing of the run is changed.

Rows: ``launch`` (torchrun's exit code within the limit), ``steps`` (metrics.jsonl holds 2 rows
with a finite loss), ``replicas`` (both ranks end with the same weights, equal to the saved
checkpoint's and different from the initial ones), ``backend`` (``nccl`` with each rank on its
own GPU, ``cuda:LOCAL_RANK``; ``gloo`` on CPU). Each row is judged on its own evidence, so a run
that dies in its first collective still says which backend it had set up.

torchrun gets the part's time limit less a margin: on expiry it is sent SIGTERM (it stops its
ranks), then SIGKILL, and any rank still alive is killed by its pid. Each rank also asks the
kernel for SIGKILL when torchrun dies (``PR_SET_PDEATHSIG``), so the driver's own hard kill of
the part leaves no rank behind holding a GPU. With fewer than 2 CUDA devices (and not
``--tiny``) the driver skips the part: "needs 2 GPUs (N visible)".
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROWS = ["launch", "steps", "replicas", "backend"]
MIN_GPUS = 2
RANKS = 2
STEPS = 2
MARK = "GPU_CHECK_DIST "
MARGIN_S = 12.0  # of the part's limit, kept for stopping torchrun and writing the rows


def skip_reason(visible: int, tiny: bool) -> str | None:
    """Why the part cannot run (None: it can): it needs 2 CUDA devices, unless ``--tiny`` (CPU)."""
    if tiny or visible >= MIN_GPUS:
        return None
    return f"needs {MIN_GPUS} GPUs ({visible} visible)"


# ------------------------------------------------------------------- the part (worker process)
def run(opts: dict[str, Any], rec) -> None:
    t_start = time.perf_counter()
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() and not opts.get("cpu") else 0
    why = skip_reason(visible, bool(opts.get("tiny")))
    if why:
        for check in ROWS:
            rec.row(check, "skipped", why, "2 ranks over NCCL, one GPU each; --tiny runs it on CPU")
        return
    gpu = visible >= MIN_GPUS
    device, backend = ("cuda", "nccl") if gpu else ("cpu", "gloo")
    repo, out = Path(opts["repo"]), Path(opts["out"])
    sys.path.insert(0, str(repo / "tests"))
    from train_fixtures import make_world, tiny_args

    root = out / "dist-run"
    shutil.rmtree(root, ignore_errors=True)
    world = make_world(root / "world")
    run_dir = root / "run"
    args = tiny_args(
        world,
        run_dir,
        *("--steps", str(STEPS), "--batch-size", "4", "--save-every", "0"),
        *("--zero-stage", "2", "--dtype", "float32", "--device", device),
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(RANKS),
        "-m",
        "gpu_check.part_dist",
        *args,
    ]
    env = dict(os.environ, TCOPD_DEBUG="1")  # a rank's failure leaves its traceback in dist.log
    if not gpu:
        env["OMP_NUM_THREADS"] = "1"  # two ranks share the cores
    limit = float(opts.get("limit_s") or 120.0)
    timeout = max(5.0, limit - (time.perf_counter() - t_start) - MARGIN_S)
    rec.set_info(device=device, backend_expected=backend, gpus_visible=visible, run_dir=str(root))
    print("$", " ".join(cmd), flush=True)
    launched = _launch(cmd, env, repo, timeout)
    ranks = launched["ranks"]
    rec.set_info(torchrun_s=launched["seconds"], rc=launched["rc"], rank_pids=launched["pids"])

    seconds, rc, error = launched["seconds"], launched["rc"], launched["error"]
    data = {"seconds": seconds, "rc": rc}
    if launched["timed_out"]:
        fail, why_not = "timeout", "the run was stopped at the time limit"
        note = f"stopped; {where_ranks_were(ranks)}" + (
            f"; last output: {error}" if error != "no output" else ""
        )
        rec.row("launch", fail, f"no exit within {timeout:.0f} s", note, **data)
    elif rc != 0:
        fail, why_not = "failed", "the run ended early: " + error
        rec.row("launch", fail, f"exit {rc} after {seconds:.1f} s", error, **data)
    else:  # a row that lacks its evidence after a clean exit is a failure of its own
        fail, why_not = "failed", ""
        how = f"torchrun --standalone --nproc_per_node {RANKS}; ZeRO-2, {STEPS} steps, fp32"
        rec.row("launch", "ok", f"exit 0 in {seconds:.1f} s", f"{how}, --device {device}", **data)
    _steps_row(rec, run_dir, fail, why_not)
    _replicas_row(rec, ranks, run_dir, fail, why_not)
    _backend_row(rec, ranks, backend, gpu, fail, why_not)


def _launch(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float) -> dict[str, Any]:
    """Run torchrun with a timeout; echo and keep its output; stop it and its ranks on expiry."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out, said = False, -1
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out, said = True, len(lines)
        proc.send_signal(signal.SIGTERM)  # torchrun forwards it to its ranks and exits
        try:
            rc = proc.wait(timeout=6)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    seconds = time.perf_counter() - t0
    reader.join(timeout=5)
    text = "".join(lines)
    ranks = rank_reports(text)
    # On a timeout, what the run said before it was stopped (not torchrun's SignalException).
    error = last_error("".join(lines[:said]) if timed_out else text)
    pids = sorted({r["pid"] for r in ranks.get("init", {}).values() if r.get("pid")})
    if timed_out:  # a rank that outlived torchrun (it should not: PR_SET_PDEATHSIG) goes now
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    return {
        "rc": rc,
        "timed_out": timed_out,
        "seconds": seconds,
        "text": text,
        "error": error,
        "ranks": ranks,
        "pids": pids,
    }


def rank_reports(text: str) -> dict[str, dict[int, dict[str, Any]]]:
    """``{event: {rank: report}}`` from the ranks' ``GPU_CHECK_DIST {json}`` lines."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for m in re.finditer(re.escape(MARK) + r"(\{[^{}]*\})", text):  # even where lines interleave
        try:
            r = json.loads(m.group(1))
        except json.JSONDecodeError:
            continue
        out.setdefault(r["event"], {})[int(r["rank"])] = r
    return out


STAGES = {"init": "process group up", "built": "trainer built", "done": "finished"}


def where_ranks_were(ranks: dict[str, dict[int, dict[str, Any]]]) -> str:
    """How far each rank got, from its reports: ``rank 0: trainer built, rank 1: not started``."""
    said = []
    for r in range(RANKS):
        got = [stage for event, stage in STAGES.items() if r in ranks.get(event, {})]
        said.append(f"rank {r}: {got[-1] if got else 'no process group'}")
    return ", ".join(said)


_ERROR = re.compile(r"^(?:\[rank\d+\]:\s*)?((?:[\w.]+(?:Error|Exception|Interrupt)\b|error: ).*)")


def last_error(text: str) -> str:
    """The most telling line of a failed run: the last exception (or tcopd ``error:``) line of
    the rank torchrun names as the root cause (tracebacks come prefixed ``[rankN]:`` once the
    process group exists), else of any rank, never torchrun's own ``ChildFailedError``; else the
    exit code line of torchrun's summary; else the last line (this part's own reports left out)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and MARK not in ln]
    errors = []
    for ln in lines:
        m = _ERROR.match(ln)
        if m and "ChildFailedError" not in ln and not ln.startswith("torch.distributed.elastic"):
            errors.append((ln, m.group(1)))
    root = re.search(r"Root Cause.*?\brank\s*:\s*(\d+)", text, re.S)
    if root:
        mine = [msg for ln, msg in errors if ln.startswith(f"[rank{root.group(1)}]:")]
        if mine:
            return mine[-1][:240]
    if errors:
        return errors[-1][1][:240]
    for ln in reversed(lines):
        if ln.startswith("exitcode"):
            return re.sub(r"\s+", " ", ln)[:240]
    return (lines[-1] if lines else "no output")[:240]


def _steps_row(rec, run_dir: Path, fail: str, why_not: str) -> None:
    path = run_dir / "metrics.jsonl"
    rows = []
    if path.is_file():
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    losses = [r.get("loss") for r in rows]
    step_s = [r.get("time_step_s") for r in rows]
    finite = all(isinstance(x, (int, float)) and math.isfinite(x) for x in losses)
    shown = ", ".join(f"{x:.4g}" if isinstance(x, (int, float)) else str(x) for x in losses)
    times = ", ".join(f"{x:.2f}" if isinstance(x, (int, float)) else str(x) for x in step_s)
    result = f"{len(rows)} of {STEPS} steps; loss {shown or '—'}"
    if len(rows) == STEPS and finite and rows:
        rec.row("steps", "ok", result, f"step seconds {times}", losses=losses, step_s=step_s)
    else:
        why = why_not or ("a loss is not finite" if rows else "no metrics.jsonl rows")
        rec.row("steps", fail, result, why, losses=losses, step_s=step_s)


def _replicas_row(rec, ranks, run_dir: Path, fail: str, why_not: str) -> None:
    done = {r: v["digest"] for r, v in ranks.get("done", {}).items()}
    start = {r: v["digest"] for r, v in ranks.get("built", {}).items()}
    data: dict[str, Any] = {"final": done, "initial": start}
    if set(done) != set(range(RANKS)):
        why = why_not or "the ranks ended without reporting their weights"
        rec.row("replicas", fail, f"{len(done)} of {RANKS} ranks reported", why, **data)
        return
    saved = data["checkpoint"] = _checkpoint_digest(run_dir)
    same = len(set(done.values())) == 1
    d = done[0]
    changed = bool(start) and d not in start.values()
    matches_saved = saved == d
    result = "identical on both ranks" if same else "the ranks differ"
    note = f"sha256 {d[:12]}…" + (
        "; the update changed them" if changed else "; unchanged since the start (no update?)"
    )
    note += (
        "; equal to the saved checkpoint"
        if matches_saved
        else f"; saved checkpoint {str(saved)[:12]}… differs"
    )
    rec.row(
        "replicas", "ok" if same and changed and matches_saved else "failed", result, note, **data
    )


def _checkpoint_digest(run_dir: Path) -> str | None:
    """``weights_digest`` of the final checkpoint's model (HF format, as rank 0 saved it)."""
    try:
        import torch
        from transformers import AutoModelForCausalLM

        from tcopd.pipelines.train.loop import weights_digest
        from tcopd.runtime.training import checkpoint as ckpt

        final = ckpt.latest_checkpoint(run_dir)
        if final is None:
            return None
        model = AutoModelForCausalLM.from_pretrained(
            str(ckpt.checkpoint_model(final)), dtype=torch.float32
        )
        return weights_digest(model.state_dict())
    except Exception as e:  # reported in the row as a mismatch, with the reason in the log
        print(f"checkpoint digest: {type(e).__name__}: {e}", flush=True)
        return None


def _backend_row(rec, ranks, backend: str, gpu: bool, fail: str, why_not: str) -> None:
    init = ranks.get("init", {})
    data = {
        "backends": {r: v.get("backend") for r, v in init.items()},
        "process_group": {r: v.get("pg_backend") for r, v in init.items()},
        "devices": {r: v.get("device") for r, v in init.items()},
    }
    if set(init) != set(range(RANKS)):
        why = why_not or "the ranks did not report their process group"
        rec.row("backend", fail, f"{len(init)} of {RANKS} ranks reported", why, **data)
        return
    got = sorted({str(v.get("backend")) for v in init.values()})
    groups = {str(v.get("pg_backend")) for v in init.values()}
    devices = [init[r].get("device") for r in range(RANKS)]
    wanted = [f"cuda:{init[r].get('local_rank')}" for r in range(RANKS)] if gpu else ["cpu"] * RANKS
    own_gpu = devices == wanted and (not gpu or len(set(devices)) == RANKS)
    ok = got == [backend] and groups == {backend} and own_gpu
    on = ", ".join(f"rank {r} on {devices[r]}" for r in range(RANKS))
    note = f"{backend} expected; {on}"
    if not own_gpu:
        note += f" (expected {', '.join(wanted)})"
    rec.row("backend", "ok" if ok else "failed", "/".join(got), note, **data)


# ------------------------------------------------------------------- one rank, under torchrun
def _say(**report: Any) -> None:
    sys.stdout.write(MARK + json.dumps(report) + "\n")  # one write: the ranks share one pipe
    sys.stdout.flush()


def _die_with_parent() -> None:
    """Ask Linux for SIGKILL when torchrun (the parent) dies, so no rank outlives a hard kill."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        return
    if os.getppid() == 1:  # torchrun died before the request was made
        os._exit(1)


def _simulate(rank: int) -> None:
    """Test hook: ``GPU_CHECK_SIMULATE=dist:rank-crash|rank-hang`` makes rank 1 fail that way."""
    how = os.environ.get("GPU_CHECK_SIMULATE", "")
    if rank != 1 or not how.startswith("dist:"):
        return
    if how == "dist:rank-crash":
        raise RuntimeError("simulated crash on rank 1")
    if how == "dist:rank-hang":
        time.sleep(3600)


def rank_main(argv: list[str]) -> None:
    """One rank under torchrun: tcopd's CLI with ``argv``, reporting backend, device and digests."""
    _die_with_parent()
    import torch.distributed as tdist

    import tcopd.pipelines.train as pipeline
    from tcopd.cli.main import main
    from tcopd.pipelines.train import loop
    from tcopd.runtime.training import distributed

    init, build, run_ = distributed.init_distributed, loop.build_trainer, loop.run

    def init_and_report(*a: Any, **k: Any):
        info = init(*a, **k)
        pg = tdist.get_backend() if tdist.is_available() and tdist.is_initialized() else None
        _say(
            event="init",
            rank=info.rank,
            world=info.world_size,
            local_rank=info.local_rank,
            device=str(info.device),
            backend=info.backend,
            pg_backend=pg,
            pid=os.getpid(),
        )
        _simulate(info.rank)
        return info

    def build_and_report(cfg, dist, emit):
        tr = build(cfg, dist, emit)
        _say(
            event="built", rank=dist.rank, digest=loop.weights_digest(tr.learner.full_state_dict())
        )
        return tr

    def run_and_report(*a: Any, **k: Any):
        result = run_(*a, **k)
        _say(event="done", rank=int(os.environ.get("RANK", "0")), digest=result.weights_digest)
        return result

    distributed.init_distributed = init_and_report  # loop.run calls it through the module
    loop.build_trainer = build_and_report
    pipeline.run = run_and_report  # the CLI calls pipeline.run
    main(argv)


if __name__ == "__main__":
    rank_main(sys.argv[1:])

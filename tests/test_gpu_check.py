"""The GPU readiness script (scripts/gpu_check.sh): its --tiny run on CPU, failure handling, wheels."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from gpu_check import driver, part_ahead, part_dist, part_scorer, part_tests  # noqa: E402

STATUSES = set(driver.STATUSES)
ENV_CHECKS = [
    "python",
    "torch",
    "GPU",
    "transformers",
    "DeepSpeed",
    "vLLM",
    "flash-attn",
    "Triton",
    "pytest",
    "wheels",
]


def run_check(
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: int = 120,
    tiny: bool = True,
):
    out = tmp_path / "out"
    full_env = dict(os.environ, PYTHON=sys.executable, **(env or {}))
    full_env.pop("OUT", None)
    proc = subprocess.run(
        [
            str(REPO / "scripts" / "gpu_check.sh"),
            *(["--tiny"] if tiny else []),
            "--no-install",
            "--out",
            str(out),
            *args,
        ],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    results = json.loads((out / "results.json").read_text())
    return proc, results, out


def rows_by_key(results) -> dict[tuple[str, str], dict]:
    return {(r["part"], r["check"]): r for r in results["rows"]}


@pytest.mark.slow
@pytest.mark.dist
def test_tiny_run_reports_every_row(tmp_path):
    proc, results, out = run_check(tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = rows_by_key(results)
    expected = [("env", c) for c in ENV_CHECKS] + [
        (p, c) for p, m in driver.PARTS.items() for c in m.ROWS
    ]
    assert list(rows) == expected
    for r in results["rows"]:
        assert r["status"] in STATUSES and r["result"], r
    # The printed table and table.md hold one line per row, in the same order.
    table = (out / "table.md").read_text().strip().splitlines()[2:]
    assert len(table) == len(expected)
    for line, (part, check) in zip(table, expected, strict=True):
        assert line.startswith(f"| {part} | {check.replace('|', chr(92) + '|')} |")
        assert line in proc.stdout
    assert (out / "gpu_check.log").stat().st_size > 0 and (out / "step.log").is_file()

    cuda = torch.cuda.is_available()
    if not cuda:  # the GPU-only rows are skipped, each with its reason
        gpu_tests = rows[("tests", "gpu-marked tests")]
        assert gpu_tests["status"] == "skipped" and "CUDA" in gpu_tests["note"]
        assert gpu_tests["data"]["passed"] == 0 and gpu_tests["data"]["skipped"] >= 3
        mem = rows[("step", "teachers resident: local − offload")]
        assert mem["status"] == "skipped" and "CUDA" in mem["result"] + mem["note"]
        assert rows[("env", "GPU")]["status"] == "missing"
    if results["env"]["dists"].get("vllm") is None:
        for c in part_vllm_rows():
            assert (
                rows[("vllm", c)]["status"] == "skipped"
                and "vllm" in rows[("vllm", c)]["note"].lower()
            )

    # Every part that can run on CPU did, and its numbers hold up.
    for p in ("scorer", "step"):
        for c in driver.PARTS[p].ROWS:
            if (p, c) != ("step", "teachers resident: local − offload") or cuda:
                assert rows[(p, c)]["status"] == "ok", rows[(p, c)]
    assert rows[("scorer", "max |Δ logp| scorer vs plain")]["data"]["max_abs_diff"] < 1e-3
    mixed = rows[("scorer", "mixed-length batch")]["data"]
    assert mixed["padding_fraction"] == pytest.approx(padding_by_hand(mixed["lengths"], 16, 1024))
    for placement in ("local", "offload"):
        upd = rows[("step", f"{placement}: update")]
        assert math.isfinite(upd["data"]["seconds"]) and "grad norm" in upd["note"]
        grad_norm = float(upd["note"].split("grad norm ")[1].split(",")[0])
        assert math.isfinite(grad_norm) and grad_norm > 0
    assert results["parts"]["step"]["info"]["zero_stage"] == 3

    # ahead: staleness 0 then 1 on the tiny world, batch 1 fresh and later ones one step stale
    for c in part_ahead.ROWS:
        assert rows[("ahead", c)]["status"] == "ok", rows[("ahead", c)]
    assert rows[("ahead", "staleness 1")]["data"]["staleness"] == [0, 1, 1]
    assert rows[("ahead", "staleness 0")]["data"]["staleness"] == [0, 0, 0]

    # dist: 2 ranks of `tcopd train`, ZeRO-2, over gloo on CPU (NCCL with 2 GPUs)
    for c in part_dist.ROWS:
        assert rows[("dist", c)]["status"] == "ok", rows[("dist", c)]
    check_dist_run(out, rows, "nccl" if torch.cuda.device_count() >= 2 else "gloo")


def rank_lines(log: str) -> dict[str, dict[int, dict]]:
    """The ranks' own reports in the part's log, parsed here independently of the part."""
    out: dict[str, dict[int, dict]] = {}
    for m in re.finditer(r"GPU_CHECK_DIST (\{[^{}]*\})", log):
        r = json.loads(m.group(1))
        out.setdefault(r["event"], {})[r["rank"]] = r
    return out


def check_dist_run(out: Path, rows: dict, backend: str) -> None:
    """The dist rows against the run's own files: metrics.jsonl, the ranks' reports, the checkpoint."""
    from transformers import AutoModelForCausalLM

    from tcopd.pipelines.train.loop import weights_digest

    run = out / "dist-run" / "run"
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m["loss"]) for m in metrics)
    assert rows[("dist", "steps")]["data"]["losses"] == [m["loss"] for m in metrics]
    assert rows[("dist", "launch")]["data"]["rc"] == 0

    reports = rank_lines((out / "dist.log").read_text())
    init, done = reports["init"], reports["done"]
    assert sorted(init) == sorted(done) == [0, 1]
    assert init[0]["pid"] != init[1]["pid"] and {i["world"] for i in init.values()} == {2}
    assert (
        {i["backend"] for i in init.values()}
        == {i["pg_backend"] for i in init.values()}
        == {backend}
    )
    row = rows[("dist", "backend")]
    assert row["result"] == backend and backend in row["note"]
    if backend == "nccl":  # each rank on its own GPU
        assert [init[r]["device"] for r in (0, 1)] == ["cuda:0", "cuda:1"]

    # Both ranks hold the weights the final checkpoint saved, and the update changed them.
    assert done[0]["digest"] == done[1]["digest"]
    assert done[0]["digest"] != reports["built"][0]["digest"]
    config = (run / "config.yaml").read_text()
    assert "zero_stage: 2" in config and "world_size: 2" in config
    latest = (run / "checkpoints" / "latest").read_text().strip()
    assert latest == "step-000002"
    model = AutoModelForCausalLM.from_pretrained(
        str(run / "checkpoints" / latest / "model"), dtype=torch.float32
    )
    assert weights_digest(model.state_dict()) == done[0]["digest"]
    assert rows[("dist", "replicas")]["data"]["final"] == {
        "0": done[0]["digest"],
        "1": done[1]["digest"],
    }


def part_vllm_rows():
    from gpu_check import part_vllm

    return part_vllm.ROWS


def padding_by_hand(lengths: list[int], prompt: int, budget: int) -> float:
    """Longest-first greedy groups with ``rows × longest ≤ budget``, written out independently."""
    seqs = sorted((prompt + n for n in lengths), reverse=True)
    real = processed = 0
    group: list[int] = []
    for n in seqs + [None]:
        if n is None or (group and (len(group) + 1) * group[0] > budget):
            real += sum(group)
            processed += len(group) * group[0]
            group = []
        if n is not None:
            group.append(n)
    return 1 - real / processed


@pytest.mark.parametrize("how,status", [("crash", "failed"), ("oom", "oom"), ("hang", "timeout")])
def test_a_failing_part_is_reported_and_the_next_part_runs(tmp_path, how, status):
    proc, results, _ = run_check(
        tmp_path,
        "--parts",
        "scorer,vllm",
        "--part-limit",
        f"scorer={4 if how == 'hang' else 90}",
        env={"GPU_CHECK_SIMULATE": f"scorer:{how}"},
        timeout=150,
    )
    rows = rows_by_key(results)
    for c in part_scorer.ROWS:
        assert rows[("scorer", c)]["status"] == status, rows[("scorer", c)]
        assert rows[("scorer", c)]["note"].startswith("part scorer: ")
    assert results["parts"]["scorer"]["status"] == status
    assert "vllm" in results["parts"]  # the next part still ran
    assert all(("vllm", c) in rows for c in part_vllm_rows())
    assert proc.returncode == (0 if status == "oom" else 1)
    if how == "crash":
        assert "simulated crash" in rows[("scorer", "scorer")]["note"]


@pytest.mark.dist
@pytest.mark.slow
# By hand (`TCOPD_BY_HAND=1 pytest tests/test_gpu_check.py -k failing_rank`, 16 s + 31 s): both
# pass; left out of `make test` for its time budget (the dist part's failure handling is
# gpu_check's own; tcopd's agreement between ranks is tests/test_rank_failures.py).
@pytest.mark.skipif(not os.environ.get("TCOPD_BY_HAND"), reason="by hand: TCOPD_BY_HAND=1")
@pytest.mark.parametrize("how,status", [("rank-crash", "failed"), ("rank-hang", "timeout")])
def test_a_failing_rank_ends_the_dist_part_without_hanging(tmp_path, how, status):
    """Rank 1 crashes (or hangs) right after joining the process group; rank 0 waits for it in a
    collective. The part stops torchrun itself, within its limit, and leaves no rank behind."""
    limit = 40
    proc, results, _ = run_check(
        tmp_path,
        "--parts",
        "dist",
        "--part-limit",
        f"dist={limit}",
        env={"GPU_CHECK_SIMULATE": f"dist:{how}"},
        timeout=150,
    )
    rows = rows_by_key(results)
    part = results["parts"]["dist"]
    assert part["status"] == "ok" and part["seconds"] < limit  # the part reported, not the driver
    launch = rows[("dist", "launch")]
    assert launch["status"] == status, launch
    if how == "rank-crash":
        assert launch["data"]["rc"] != 0
        assert "simulated crash on rank 1" in launch["note"]
    else:
        assert "rank 1: process group up" in launch["note"]
    for c in ("steps", "replicas"):
        assert rows[("dist", c)]["status"] == status, rows[("dist", c)]
    assert rows[("dist", "backend")]["status"] == "ok"  # both ranks got that far
    pids = part["info"]["rank_pids"]
    assert len(pids) == 2 and not any(alive(pid) for pid in pids)
    assert proc.returncode == 1


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_dist_is_skipped_without_two_gpus(tmp_path):
    _, results, out = run_check(
        tmp_path, "--parts", "dist", env={"CUDA_VISIBLE_DEVICES": ""}, tiny=False
    )
    rows = [r for r in results["rows"] if r["part"] == "dist"]
    assert [r["check"] for r in rows] == part_dist.ROWS
    for r in rows:
        assert r["status"] == "skipped" and r["result"] == "needs 2 GPUs (0 visible)", r
    assert results["parts"]["dist"]["status"] == "skipped"
    assert not (out / "dist.log").exists()  # nothing was launched
    assert part_dist.skip_reason(1, tiny=False) == "needs 2 GPUs (1 visible)"
    assert part_dist.skip_reason(1, tiny=True) is None
    assert part_dist.skip_reason(2, tiny=False) is None


def test_budget_spent_skips_parts_with_reason(tmp_path):
    _, results, _ = run_check(tmp_path, "--parts", "scorer,step", "--budget-s", "1")
    for (part, _check), r in rows_by_key(results).items():
        if part in ("scorer", "step"):
            assert r["status"] == "skipped" and r["result"] == "global budget spent"


def test_wheels_to_install_picks_missing_and_pinned_only():
    wheels = [
        "wheels/transformers-5.24.0-py3-none-any.whl",
        "wheels/tokenizers-0.22.1-cp39-abi3-manylinux_2_17_x86_64.whl",
        "wheels/PyYAML-6.0.2-cp312-cp312-manylinux_2_17_x86_64.whl",
        "wheels/py_cpuinfo-9.0.0-py3-none-any.whl",
        "wheels/numpy-2.3.0-cp312-cp312-manylinux_2_28_x86_64.whl",
        "wheels/torch-2.13.0-cp312-cp312-manylinux_2_28_x86_64.whl",
        "wheels/tqdm-4.67.0-py3-none-any.whl",
    ]
    installed = {
        "transformers": "4.57.1",
        "tokenizers": "0.22.1",
        "pyyaml": None,
        "py-cpuinfo": None,
        "numpy": None,
        "torch": "2.13.0",
        "tqdm": "4.66.0",
    }
    got = sorted(Path(w).name for w in driver.wheels_to_install(wheels, installed))
    # transformers: pinned, other version → shadowed; tokenizers: same version; pyyaml and
    # py-cpuinfo: missing; numpy/torch: never; tqdm: unpinned and present → left alone.
    assert got == [
        "PyYAML-6.0.2-cp312-cp312-manylinux_2_17_x86_64.whl",
        "py_cpuinfo-9.0.0-py3-none-any.whl",
        "transformers-5.24.0-py3-none-any.whl",
    ]
    assert driver.wheel_dist("py_cpuinfo-9.0.0-py3-none-any.whl") == ("py-cpuinfo", "9.0.0")


def test_junit_summary_counts(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_gpu" name="a"/>'
        '<testcase classname="tests.test_gpu" name="b"><failure message="boom"/></testcase>'
        '<testcase classname="tests.test_gpu" name="c"><error message="setup"/></testcase>'
        '<testcase classname="tests.test_gpu" name="d"><skipped message="needs a CUDA device"/></testcase>'
        "</testsuite></testsuites>"
    )
    s = part_tests.summarize(xml)
    assert (s["passed"], s["failed"], s["skipped"]) == (1, 2, 1)
    assert s["failures"] == ["tests.test_gpu::b", "tests.test_gpu::c"]
    assert s["skip_reason"] == "needs a CUDA device"
    assert [p.name for p in part_tests.gpu_test_files(REPO / "tests")] >= ["test_gpu.py"]


def test_qwen3_4b_shape_is_exact():
    from gpu_check.shapes import n_params, qwen3_config
    from transformers import Qwen3ForCausalLM

    config = qwen3_config(tiny=False)
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (2560, 36, 151_936)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (32, 8, 128)
    assert config.intermediate_size == 9728 and config.tie_word_embeddings
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    # Qwen3-4B: 4.02 B parameters (tied embeddings counted once); 36 × (q 2560×4096 + k, v
    # 2560×1024 each + o 4096×2560 + MLP 3 × 2560×9728 + norms) + 151,936 × 2560 + final norm.
    layer = 2560 * 4096 * 2 + 2560 * 1024 * 2 + 3 * 2560 * 9728 + 2 * 2560 + 2 * 128
    assert n_params(model) == 36 * layer + 151_936 * 2560 + 2560


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="vllm not installed (make test-vllm)"
)
def test_vllm_part_rolls_out_updates_and_rolls_out_again(tmp_path):
    _, results, _ = run_check(tmp_path, "--parts", "vllm", timeout=400)
    rows = rows_by_key(results)
    for c in part_vllm_rows():
        assert rows[("vllm", c)]["status"] == "ok", rows[("vllm", c)]
    after = rows[("vllm", "rollout after update")]["data"]
    assert after["changed"] > 0 and after["matches"] == 4


def make_wheel(directory: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel (one module ``name`` with ``VERSION``), written by hand."""
    import zipfile

    path = directory / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for f, text in files.items():
            z.writestr(f, text)
    return path


def test_missing_packages_are_installed_offline_from_wheels(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "gpucheckdummy", "1.2.3")
    deps = tmp_path / "deps"
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            str(REPO / "scripts" / "gpu_check.sh"),
            "--tiny",
            "--parts",
            "vllm",
            "--out",
            str(out),
            "--wheels",
            str(wheels),
            "--deps-dir",
            str(deps),
        ],
        env=dict(os.environ, PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["wheels"]["installed"] == ["gpucheckdummy-1.2.3-py3-none-any.whl"]
    assert (deps / "gpucheckdummy" / "__init__.py").is_file()
    row = rows_by_key(results)[("env", "wheels")]
    assert row["status"] == "ok" and row["result"] == "installed 1 of 1 wheels"

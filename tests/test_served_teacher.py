"""Teachers served by a real vLLM server (CPU build; run in .vllm-venv by `make test-vllm`).

One server at a time, on a free localhost port, started with ``tcopd serve-teacher`` (so that
command is tested too) and stopped by the module's fixture. The server starts twice (~25 s each
on 2 cores): the toy anti-expert, and the same again after the fault test killed it. (A served
teacher whose tokenizer differs from the student's is refused in tests/test_real_model_vllm.py,
against the SmolLM2 server that module starts anyway.) References: float64 log-softmax of the HF
model, and a run with the same teacher local.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_fixtures import run_cli

from tcopd.runtime.scoring import served
from tcopd.runtime.toy.build import default_root, ensure_toy

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm not installed"),
]

TOY = default_root()  # the shipped toy world, where tcopd keeps it ($TCOPD_TOY_DIR honoured)
TOL = 2e-3  # served fp32 (vLLM CPU kernels) vs float64 reference, as in test_vllm.py
# the dense loss's gradient norm, served whole rows against the local teacher: each position's
# target moves by the server's fp32 log-prob error (≲ TOL)
DENSE_TOL = 1e-2


class Server:
    """``tcopd serve-teacher MODEL`` in its own process group (vLLM starts child processes)."""

    def __init__(self, log_dir: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir, self.proc, self.model, self.starts = log_dir, None, None, 0

    def serve(self, model: Path) -> None:
        if self.proc is not None and self.proc.poll() is None and self.model == model:
            return
        self.kill()
        self.starts += 1
        self.log = self.log_dir / f"server-{self.starts}.log"
        cmd = [sys.executable, "-m", "tcopd", "serve-teacher", str(model), "--port", str(self.port),
               "--host", "127.0.0.1", "--dtype", "float32", "--enforce-eager",
               "--max-logprobs", "-1"]  # whole rows allowed: the dense loss's exact mode  # fmt: skip
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_TARGET_DEVICE": "cpu"}
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)  # fmt: skip
        self.model = model
        served.wait_until_ready(self.url, self.proc, timeout_s=300)

    def kill(self) -> None:
        """SIGKILL the whole group (the tcopd process, the API server, the engine core)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module", autouse=True)
def toy_world():
    """Install the shipped toy world if this machine has none yet (a few seconds)."""
    ensure_toy(TOY)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    box = Server(tmp_path_factory.mktemp("server-logs"))
    box.serve(TOY / "anti_expert")
    yield box
    box.kill()


@pytest.fixture(scope="module")
def rollouts(tmp_path_factory):
    """20 toy rollouts: the student's samples for 10 toy prompts, 2 each (token ids)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TOY / "student"))
    model = AutoModelForCausalLM.from_pretrained(str(TOY / "student")).eval()
    lines = (TOY / "data" / "train_math.jsonl").read_text().splitlines()[:10]
    torch.manual_seed(0)
    rows = []
    for i, line in enumerate(lines):
        p = tok(json.loads(line)["prompt"][0]["content"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = model.generate(torch.tensor([p]), do_sample=True, max_new_tokens=40,
                                 num_return_sequences=2, pad_token_id=tok.pad_token_id)  # fmt: skip
        for j, seq in enumerate(out.tolist()):
            r = seq[len(p) :]
            r = r[: r.index(tok.pad_token_id)] if tok.pad_token_id in r else r
            rows.append({"id": f"{i}-{j}", "prompt_ids": p, "response_ids": r or [5]})
    path = tmp_path_factory.mktemp("rollouts") / "rollouts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def ref64(m, p, r):
    with torch.no_grad():
        lsm = torch.log_softmax(m(torch.tensor([p + r])).logits[0, len(p) - 1 : -1], -1)
    return lsm.gather(-1, torch.tensor(r)[:, None])[:, 0]


def train_args(out: Path, anti: str, *extra: str) -> list[str]:
    """A short toy run: the toy student and expert local, the anti-expert at ``anti``."""
    return [
        "train", "--toy", "--student", str(TOY / "student"), "--expert", str(TOY / "expert"),
        "--anti-expert", anti, "--lambdas", "1.5,-0.5",
        "--data", str(TOY / "data" / "train_math.parquet"), "--out", str(out),
        "--steps", "3", "--batch-size", "4", "--samples-per-prompt", "2",
        "--max-response-tokens", "32", "--max-prompt-tokens", "160", "--no-grade",
        "--save-every", "1", "--seed", "0", *extra,
    ]  # fmt: skip


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def one_error_line(err: str) -> str:
    """The one ``error:`` line of a failed run (progress bars may share stderr), no traceback."""
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


# ------------------------------------------------------------------------------------ scoring
def test_score_with_served_teacher_matches_float64_reference(server, rollouts, tmp_path, capsys):
    path, rows = rollouts
    out = tmp_path / "scores.jsonl"
    code, printed, err = run_cli([
        "score", "--student", str(TOY / "student"), "--expert", str(TOY / "expert"),
        "--teacher", f"anti_expert={server.url}:-0.5", "--lambdas", "1.5",
        "--input", str(path), "--output", str(out), "--compare-local",
    ], capsys)  # fmt: skip
    assert code == 0, err[-3000:]
    assert "anti_expert served vs local: max |Δ|" in printed
    got = [json.loads(x) for x in out.read_text().splitlines()]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(TOY / "anti_expert")).double().eval()
    diffs = []
    for row, g in zip(rows, got, strict=True):
        want = ref64(model, row["prompt_ids"], row["response_ids"])
        lp = torch.tensor(g["logprobs"]["anti_expert"], dtype=torch.float64)
        diffs.append((lp - want).abs())
    d = torch.cat(diffs)
    print(f"served vs float64: max {d.max():.2e}, mean {d.mean():.2e} over {len(d)} tokens")
    assert d.max() <= TOL


# ----------------------------------------------------------------------------------- training
def test_train_with_served_anti_expert_matches_a_local_run(server, tmp_path, capsys):
    served_run, local_run = tmp_path / "served", tmp_path / "local"
    code, _, err = run_cli(train_args(served_run, server.url), capsys)
    assert code == 0, err[-3000:]
    rows = metrics(served_run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    code, _, err = run_cli(train_args(local_run, str(TOY / "anti_expert"), "--steps", "1"), capsys)
    assert code == 0, err[-3000:]
    a, b = rows[0], metrics(local_run)[0]
    assert a["logratio/anti_expert"] == pytest.approx(b["logratio/anti_expert"], abs=TOL)
    assert a["logratio/expert"] == pytest.approx(b["logratio/expert"], abs=1e-6)  # same rollouts
    saved = (served_run / "config.yaml").read_text()
    assert server.url in saved


def opd_args(out: Path, expert: str, *extra: str) -> list[str]:
    """OPD (one teacher, λ = 1) against the model at ``expert`` (here: the anti-expert's weights,
    the one the server holds: OPD toward any teacher is the same computation)."""
    return [
        "train", "--toy", "--student", str(TOY / "student"), "--expert", expert, "--lambdas", "1",
        "--data", str(TOY / "data" / "train_math.parquet"), "--out", str(out),
        "--steps", "1", "--batch-size", "4", "--samples-per-prompt", "2",
        "--max-response-tokens", "32", "--max-prompt-tokens", "160", "--no-grade",
        "--save-every", "1", "--seed", "0", *extra,
    ]  # fmt: skip


def test_dense_loss_with_the_served_teacher_whole_rows_and_top_k(server, tmp_path, capsys):
    """--loss dense, TC-OPD (1.5, −0.5) with the anti-expert served and OPD toward the served
    model: with whole rows the support is every token, and the step's gradient norm is the
    local run's within the server's fp32 tolerance (the same rollouts; the update is
    checked weight by weight against the fake server in test_served_client.py); a top 16
    trains and logs its support."""
    dense = ("--loss", "dense", "--lr", "5e-4")
    local_anti = str(TOY / "anti_expert")
    runs = {}
    for name, args in (
        ("local", train_args(tmp_path / "local", local_anti, *dense, "--steps", "1")),
        ("rows", train_args(tmp_path / "rows", server.url, *dense, "--steps", "1",
                            "--served-top-k", "-1")),
        ("top16", train_args(tmp_path / "top16", server.url, *dense, "--steps", "1",
                             "--served-top-k", "16")),
        ("opd-local", opd_args(tmp_path / "opd-local", local_anti, *dense)),
        ("opd-rows", opd_args(tmp_path / "opd-rows", server.url, *dense, "--served-top-k", "-1")),
    ):  # fmt: skip
        code, _, err = run_cli(args, capsys)
        assert code == 0, err[-3000:]
        runs[name] = metrics(tmp_path / name)[0]
    for local, rows, teacher in (
        (runs["local"], runs["rows"], "anti_expert"),
        (runs["opd-local"], runs["opd-rows"], "expert"),
    ):
        assert rows[f"logratio/{teacher}"] == pytest.approx(local[f"logratio/{teacher}"], abs=TOL)
        # the served path's loss is a surrogate centred by its baseline: its value is 0 with
        # whole rows; its gradient is the dense loss's
        assert local["loss"] > 0.01 and abs(rows["loss"]) < 1e-5
        assert rows["grad_norm"] == pytest.approx(local["grad_norm"], rel=DENSE_TOL)
        assert rows["served_outside"] == 0 and rows["served_support"] == 139
        assert rows["served_student_mass"] == pytest.approx(1.0, abs=1e-6)
    top, rows = runs["top16"], runs["rows"]
    assert 0 < top["served_support"] <= 16 and 0 <= top["served_outside"] < 1
    assert rows["served_bytes_per_position"] > top["served_bytes_per_position"] > 0


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--max-prompt-tokens", "250"], "max_model_len 256 < 283"),
        (["--temperature", "0.7"], "gives log-probs at temperature 1"),
    ],
)
def test_bad_settings_refused_before_any_step(server, tmp_path, capsys, extra, needle):
    run = tmp_path / "run"
    code, _, err = run_cli(train_args(run, server.url, *extra), capsys)
    assert code == 1 and needle in one_error_line(err)
    assert not (run / "metrics.jsonl").exists()


def test_unreachable_url_refused_before_any_step(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    run = tmp_path / "run"
    code, _, err = run_cli(train_args(run, closed), capsys)
    line = one_error_line(err)
    assert code == 1 and f"'anti_expert': cannot reach {closed}" in line
    assert not (run / "metrics.jsonl").exists()


def test_server_killed_mid_run_then_resume(server, tmp_path, capsys, monkeypatch):
    from tcopd.pipelines.train import checkpointing, loop

    real_save = checkpointing.save

    def save_then_kill(tr, run_dir, step, *rest):
        real_save(tr, run_dir, step, *rest)
        if step == 1:
            server.kill()  # the teacher's node goes down after step 1's checkpoint

    monkeypatch.setattr(loop.checkpointing, "save", save_then_kill)
    run = tmp_path / "run"
    code, _, err = run_cli(train_args(run, server.url, "--teacher-retries", "2"), capsys)
    line = one_error_line(err)
    assert code == 1 and "'anti_expert'" in line and server.url in line and "3 tries" in line
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-000001"
    assert (run / "checkpoints" / "step-000001" / "trainer_state.json").is_file()
    assert [r["step"] for r in metrics(run)] == [1]
    monkeypatch.setattr(loop.checkpointing, "save", real_save)
    server.serve(TOY / "anti_expert")  # back on the same port
    code, _, err = run_cli(["train", "--resume", str(run)], capsys)
    assert code == 0, err[-3000:]
    assert [r["step"] for r in metrics(run)] == [1, 2, 3]

"""`tcopd train` on tiny models: a full step, the OPD gradient, kill-and-resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import full_and_killed_then_resumed, make_world, run_cli, tiny_args


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


def _weights(run: Path) -> dict[str, torch.Tensor]:
    latest = (run / "checkpoints" / "latest").read_text().strip()
    files = sorted((run / "checkpoints" / latest / "model").glob("*.safetensors"))
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(f))
    return out


def test_one_full_run_end_to_end(world, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(tiny_args(world, out), capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["time_checkpoint_s"] == 0 and rows[1]["time_checkpoint_s"] > 0  # --save-every 1
    r = rows[-1]
    for key in (
        "reward_mean",
        "logratio/expert",
        "logratio/anti_expert",
        "kl_ref",
        "clip_fraction",
        "is_weight_mean",
        "entropy",
        "response_len_mean",
        "response_len_max",
        "truncated_fraction",
        "rollout_accuracy",
        "time_rollout_s",
        "time_scoring_s",
        "time_update_s",
        "time_sync_s",
        "time_grade_wait_s",
        "time_checkpoint_s",
        "tokens_per_s",
        "peak_mem_gb",
    ):
        assert key in r, key
    # reward = (1.5·d_expert − 0.5·d_anti) / 2 exactly, as token means
    assert r["reward_mean"] == pytest.approx(
        (1.5 * r["logratio/expert"] - 0.5 * r["logratio/anti_expert"]) / 2, abs=1e-5
    )
    assert 0.0 <= r["rollout_accuracy"] <= 1.0 and r["responses"] == 4
    # the first step is on-policy: the IS weight is ~1 (HF sampler vs trainer, both fp32)
    assert rows[0]["is_weight_mean"] == pytest.approx(1.0, abs=1e-3)
    config = (out / "config.yaml").read_text()
    assert "teachers:" in config and "anti_expert" in config
    # the final checkpoint is an HF model directory that transformers loads, tokenizer included
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = out / "checkpoints" / "step-000002" / "model"
    AutoModelForCausalLM.from_pretrained(model_dir)
    AutoTokenizer.from_pretrained(model_dir)
    # weights moved away from the student's
    start = load_file(next(world.student.glob("*.safetensors")))
    end = _weights(out)
    assert any(not torch.equal(start[k], end[k]) for k in start)


def test_opd_gradient_equals_reverse_kl_gradient(world):
    """λ = 1, one teacher, on-policy (ρ = 1): ∇loss = ∇ (1/N) Σ_t sg(lp_θ − lp_T)·lp_θ (reverse KL)."""
    from tcopd.core.objective import policy_loss
    from tcopd.core.signal import pad_right, training_signal
    from tcopd.core.teachers import TeacherSpec
    from tcopd.runtime.models.loading import load_causal_lm
    from tcopd.runtime.scoring.forward import model_response_logprobs

    student = load_causal_lm(world.student).train()
    teacher = load_causal_lm(world.expert)
    prompts = [[5, 6, 7], [8, 9]]
    responses = [[10, 11, 12, 13], [14, 15]]

    def naive(model, dtype):  # float64 log_softmax of the full logits: an independent path
        rows = []
        for p, r in zip(prompts, responses):
            ids = torch.tensor([p + r])
            logits = model(ids).logits[0].to(dtype)
            lsm = torch.log_softmax(logits, -1)
            rows.append(
                lsm[len(p) - 1 : len(p) + len(r) - 1].gather(-1, torch.tensor(r)[:, None])[:, 0]
            )
        return rows

    with torch.no_grad():
        lp_T = pad_right([x.float() for x in naive(teacher, torch.float64)], 4)
        lp_old = pad_right([x.float() for x in naive(student, torch.float64)], 4)
    mask = pad_right([torch.ones(len(r)) for r in responses], 4)
    rows = lambda t: [t[b, : len(r)] for b, r in enumerate(responses)]  # noqa: E731
    signal = training_signal(
        rows(lp_old),
        rows(lp_old),
        {"t": rows(lp_T)},
        [TeacherSpec("t", "-", 1.0)],
        domains=[None] * 2,
    )
    adv = signal.adv_BT
    new = model_response_logprobs(student, prompts, responses)
    loss, _ = policy_loss(new, lp_old, adv, mask)
    ours = torch.autograd.grad(loss, list(student.parameters()))
    lp = pad_right([x.double() for x in naive(student, torch.float64)], 4)
    n = mask.sum()
    kl_surrogate = (((lp.detach() - lp_T.double()) * lp) * mask).sum() / n
    ref = torch.autograd.grad(kl_surrogate, list(student.parameters()))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-6)


def test_kill_and_resume_reaches_the_same_weights(world, tmp_path, capsys):
    args = lambda out: tiny_args(world, out, "--steps", "3")  # noqa: E731
    full, killed = full_and_killed_then_resumed(args, tmp_path, capsys)
    a, b = _weights(full), _weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--lambdas", "1.5"], "--lambdas has 1 value"),
        (["--lambdas", "1.5,x"], "'x' is not a number"),
        (["--lambdas", "0,0"], "all λ are zero"),
        (["--teacher", "expert=/x:1"], "duplicate teacher name 'expert'"),
        (["--config", "/nonexistent.yaml"], "does not exist"),
    ],
)
def test_bad_input_is_one_error_line(world, tmp_path, capsys, extra, needle):
    code, _, err = run_cli(tiny_args(world, tmp_path / "r", *extra), capsys)
    assert code == 1
    assert err.strip().startswith("error:") and needle in err, err
    assert "Traceback" not in err


def test_bad_config_files(world, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("stepz: 3\n")
    code, _, err = run_cli(tiny_args(world, tmp_path / "r", "--config", str(cfg)), capsys)
    assert code == 1 and "unknown config key 'stepz'" in err
    cfg.write_text("ppo_epochs: many\n")
    code, _, err = run_cli(tiny_args(world, tmp_path / "r", "--config", str(cfg)), capsys)
    assert code == 1 and "config key 'ppo_epochs' expects an integer, got 'many'" in err


def test_run_dir_and_resume_errors(world, tmp_path, capsys):
    code, _, err = run_cli(["train", "--resume", str(tmp_path)], capsys)
    assert code == 1 and "not a run directory" in err
    out = tmp_path / "run"
    (out).mkdir()
    (out / "config.yaml").write_text("out: x\nsteps: 2\nlr: 0.001\n")
    code, _, err = run_cli(tiny_args(world, out), capsys)
    assert code == 1 and "already holds a run" in err
    code, _, err = run_cli(["train", "--resume", str(out), "--lr", "0.5"], capsys)
    assert code == 1 and "lr: run has 0.001, flags say 0.5" in err


def test_data_without_required_fields(world, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": [{"role": "user", "content": "1 + 1"}]}) + "\n")
    args = tiny_args(world, tmp_path / "r")
    args[args.index("--data") + 1] = str(bad)
    code, _, err = run_cli(args, capsys)
    assert code == 1 and err.startswith("error:") and "reward_model" in err, err


def test_usage_error_keeps_exit_code_2(capsys):
    code, _, _ = run_cli(["train", "--steps", "notanint"], capsys)
    assert code == 2


def test_help_lists_commands(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    for name in ("train", "score", "eval", "analyze"):
        assert name in out


def test_more_mini_batches_than_responses(world, tmp_path, capsys):
    """4 responses, 8 mini-batches: the empty ones are skipped, not handed to DeepSpeed."""
    code, _, err = run_cli(
        tiny_args(world, tmp_path / "r", "--steps", "1", "--mini-batches", "8"), capsys
    )
    assert code == 0, err
    row = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["responses"] == 4


def test_optimizer_offload_with_client_adamw(world, tmp_path, capsys):
    """ZeRO-Offload keeps the client torch AdamW (DeepSpeed would otherwise demand its C++ Adam)."""
    cfg = tmp_path / "off.yaml"
    cfg.write_text("offload_optimizer: true\n")
    code, _, err = run_cli(
        tiny_args(world, tmp_path / "r", "--steps", "1", "--config", str(cfg)), capsys
    )
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "metrics.jsonl").read_text())["step"] == 1


def test_multitask_lambda_table_from_config(tmp_path, capsys):
    """Each prompt's domain picks its λ row; the table is validated and recorded in config.yaml."""
    from train_fixtures import make_world

    world = make_world(tmp_path / "w", n_prompts=8, domains=("math", "code"))
    cfg = tmp_path / "mt.yaml"
    cfg.write_text(
        "lambda_table:\n"
        "  math: {expert: 1.5, anti_expert: -0.5}\n"
        "  code: {expert: -0.5, anti_expert: 1.5}\n"
    )
    out = tmp_path / "r"
    code, _, err = run_cli(tiny_args(world, out, "--steps", "1", "--config", str(cfg)), capsys)
    assert code == 0, err
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["lambda_table"]["code"] == {"expert": -0.5, "anti_expert": 1.5}
    cfg.write_text("lambda_table:\n  math: {physics: 1.0}\n")
    code, _, err = run_cli(tiny_args(world, tmp_path / "r2", "--config", str(cfg)), capsys)
    assert code == 1 and "names teacher 'physics', which is not configured" in err


def test_per_domain_metrics_add_up_to_the_totals(tmp_path, capsys):
    """rollout_accuracy/<d> and response_len_mean/<d>, weighted by each domain's responses,
    give back the step's totals (computed by separate code)."""
    from train_fixtures import make_world

    world = make_world(tmp_path / "w", n_prompts=8, domains=("math", "code"))
    cfg = tmp_path / "mt.yaml"
    cfg.write_text("lambda_table:\n  math: {expert: 1.5, anti_expert: -0.5}\n")
    out = tmp_path / "r"
    args = tiny_args(world, out, "--steps", "2", "--batch-size", "4", "--config", str(cfg))
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()):
        acc = {d: row[f"rollout_accuracy/{d}"] or 0.0 for d in ("math", "code")}
        lens = {d: row[f"response_len_mean/{d}"] or 0.0 for d in ("math", "code")}
        n = {d: row[f"responses/{d}"] for d in ("math", "code")}
        total = sum(n.values())
        assert total == row["responses"] and min(n.values()) >= 0
        assert abs(sum(acc[d] * n[d] for d in n) / total - row["rollout_accuracy"]) < 1e-9
        assert abs(sum(lens[d] * n[d] for d in n) / total - row["response_len_mean"]) < 1e-9


def test_domain_without_a_lambda_is_refused_before_loading(tmp_path, capsys):
    """Teachers without λ of their own + a table without a row for 'code': one line naming it."""
    from train_fixtures import make_world

    world = make_world(tmp_path / "w", n_prompts=8, domains=("math", "code"))
    cfg = tmp_path / "mt.yaml"
    cfg.write_text("lambda_table:\n  math: {math: 1.5, code: -0.5}\n")
    args = tiny_args(world, tmp_path / "r", "--config", str(cfg))
    i = args.index("--expert")
    args[i : i + 6] = [
        "--teacher",
        f"math={world.expert}",
        "--teacher",
        f"code={world.anti_expert}",
    ]
    code, _, err = run_cli(args, capsys)
    assert code == 1, err
    assert "domain 'code': 4 prompt(s)" in err and "no row" in err, err
    assert not (tmp_path / "r" / "checkpoints").exists()

"""``tcopd train --lora`` (peft): π_ref = adapters off, the LoRA gradient, checkpoints, resume,
the merged export, adapter directories in eval / score, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import full_and_killed_then_resumed, make_world, run_cli, tiny_args

pytest.importorskip("peft")

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [[5, 6, 7], [8, 9]]
RESPONSES = [[10, 11, 12, 13], [14, 15]]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


def _adapted(path: Path, dtype=torch.float32, seed: int = 0, targets: str = "all-linear"):
    """The model at ``path`` with LoRA layers whose B is random (peft starts B at 0: no-op)."""
    from tcopd.runtime.models import lora
    from tcopd.runtime.models.loading import load_causal_lm

    student = lora.wrap(
        load_causal_lm(path, dtype=dtype), lora.LoraSettings(4, 8.0, 0.0, targets), str(path)
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in student.model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return student


def _naive_logprobs(model, dtype=torch.float64, params=None):
    """float64 log_softmax of the full logits at the response positions (independent path)."""
    from torch.func import functional_call

    rows = []
    for p, r in zip(PROMPTS, RESPONSES):
        ids = torch.tensor([p + r])
        out = functional_call(model, params, (ids,)) if params is not None else model(ids)
        lsm = torch.log_softmax(out.logits[0].to(dtype), -1)
        rows.append(
            lsm[len(p) - 1 : len(p) + len(r) - 1].gather(-1, torch.tensor(r)[:, None])[:, 0]
        )
    return rows


@pytest.mark.parametrize("tie", [True, False])
def test_adapter_off_forward_is_the_base_model_exactly(tmp_path, tie):
    from helpers_tiny import make_tiny_qwen3, make_tokenizer

    from tcopd.runtime.models.loading import load_causal_lm
    from tcopd.runtime.models.lora import adapters_disabled
    from tcopd.runtime.scoring.forward import model_response_logprobs

    path = make_tiny_qwen3(tmp_path, make_tokenizer(tmp_path), tie=tie)
    base = load_causal_lm(path)
    student = _adapted(path)
    grads = {n: p.requires_grad for n, p in student.model.named_parameters()}
    with torch.no_grad():
        want = model_response_logprobs(base, PROMPTS, RESPONSES)
        on = model_response_logprobs(student.model, PROMPTS, RESPONSES)
        with adapters_disabled(student.model):
            off = model_response_logprobs(student.model, PROMPTS, RESPONSES)
        again = model_response_logprobs(student.model, PROMPTS, RESPONSES)
    assert torch.equal(off, want)  # bit for bit: π_ref needs no copy
    assert (on - want).abs().max() > 1e-3  # the adapters do change the policy...
    assert torch.equal(again, on)  # ...and are back on after the context
    assert grads == {n: p.requires_grad for n, p in student.model.named_parameters()}
    assert all(("lora_" in n) == g for n, g in grads.items())  # only the adapter trains


def test_reference_forward_is_the_base_model_in_eval_mode_from_train_mode(tmp_path):
    """The update leaves the student in train mode: π_ref's forward must not apply the base
    model's dropout (every other scored model is in eval mode)."""
    from helpers_tiny import make_tiny_qwen3, make_tokenizer

    from tcopd.runtime.models.loading import load_causal_lm
    from tcopd.runtime.models.lora import adapters_disabled, reference_forward
    from tcopd.runtime.scoring.forward import model_response_logprobs

    path = make_tiny_qwen3(tmp_path, make_tokenizer(tmp_path), attention_dropout=0.5)
    base = load_causal_lm(path)  # eval mode
    student = _adapted(path)
    student.model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        want = model_response_logprobs(base, PROMPTS, RESPONSES)
        with adapters_disabled(student.model):  # train mode: dropout on, so the test can fail
            noisy = model_response_logprobs(student.model, PROMPTS, RESPONSES)
        with reference_forward(student.model):
            off = model_response_logprobs(student.model, PROMPTS, RESPONSES)
    assert not torch.equal(noisy, want)
    assert torch.equal(off, want)
    assert student.model.training  # the mode is restored
    assert all(m.training for m in student.model.modules())


def test_lora_gradient_equals_float64_reference(world):
    """∇_{A,B} of the clipped loss (on-policy, ρ = 1: −mean_t A_t·∇lp_t) through peft's layers,
    against W + (α/r)·B·A written out in float64 on the plain base model."""
    from tcopd.core.objective import policy_loss
    from tcopd.core.signal import pad_right
    from tcopd.runtime.models.loading import load_causal_lm
    from tcopd.runtime.scoring.forward import model_response_logprobs

    student = _adapted(world.student)
    lora_params = {n: p for n, p in student.model.named_parameters() if p.requires_grad}
    mask = pad_right([torch.ones(len(r)) for r in RESPONSES], 4)
    adv = torch.linspace(-1.0, 1.0, 8).view(2, 4) * mask
    new = model_response_logprobs(student.model, PROMPTS, RESPONSES)
    loss, _ = policy_loss(new, new.detach(), adv, mask)
    ours = dict(zip(lora_params, torch.autograd.grad(loss, list(lora_params.values()))))

    base = load_causal_lm(world.student, dtype=torch.float64)
    params = {n: p.detach() for n, p in base.named_parameters()}
    leaves = {n: p.detach().double().requires_grad_(True) for n, p in lora_params.items()}
    scale = 8.0 / 4  # alpha / r
    for n in leaves:
        if ".lora_A." in n:
            module = n.split(".lora_A.")[0]
            B = leaves[n.replace(".lora_A.", ".lora_B.")]
            params[module + ".weight"] = params[module + ".weight"] + scale * B @ leaves[n]
    lp = pad_right(_naive_logprobs(base, params=params), 4)
    ref_loss = -(adv.double() * lp * mask).sum() / mask.sum()
    ref = dict(zip(leaves, torch.autograd.grad(ref_loss, list(leaves.values()))))
    assert len(ours) == 2 * 7 * 2  # q k v o gate up down, A and B, 2 layers
    worst = max((ours[n].double() - ref[n]).abs().max().item() for n in ours)
    scale_g = max(ref[n].abs().max().item() for n in ref)
    assert worst <= 1e-5 * max(scale_g, 1.0), (worst, scale_g)


def _lora_args(world, out: Path, *extra: str) -> list[str]:
    return tiny_args(world, out, "--lora", "--lora-rank", "4", "--zero-stage", "0", *extra)


def _adapter_weights(run: Path) -> dict[str, torch.Tensor]:
    latest = (run / "checkpoints" / "latest").read_text().strip()
    return load_file(run / "checkpoints" / latest / "adapter" / "adapter_model.safetensors")


@pytest.mark.parametrize(
    "loss, zero, extra",
    [
        ("sampled", "0", ()),
        ("dense", "0", ()),
        pytest.param("sampled", "3", (), marks=pytest.mark.slow),
        # activation checkpointing recomputes the LoRA branch
        pytest.param(
            "sampled", "2", ("--gradient-checkpointing",), marks=pytest.mark.slow,
        ),
        pytest.param("dense", "1", ("--gradient-checkpointing",), marks=pytest.mark.slow),
    ],
)  # fmt: skip
def test_lora_run_trains_the_adapter_only(world, tmp_path, capsys, loss, zero, extra):
    from peft import PeftModel

    from tcopd.runtime.models.loading import load_causal_lm

    out = tmp_path / "run"
    args = _lora_args(world, out, "--loss", loss, "--zero-stage", zero, *extra)
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # step 1: B = 0, so π_old = π_ref (adapters off) token for token
    assert rows[0]["kl_ref"] == 0.0 and rows[1]["kl_ref"] != 0.0
    cfg = (out / "config.yaml").read_text()
    assert "lora: true" in cfg and "lora_rank: 4" in cfg
    ckpt = out / "checkpoints" / "step-000002"
    assert not (ckpt / "model").exists()
    adapter = json.loads((ckpt / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["base_model_name_or_path"] == str(world.student.resolve())
    weights = _adapter_weights(out)
    assert weights and all("lora_" in k for k in weights)
    assert any(v.abs().max() > 0 for k, v in weights.items() if "lora_B" in k)  # it learned
    # peft loads the checkpoint onto the base model
    PeftModel.from_pretrained(load_causal_lm(world.student), str(ckpt / "adapter"))


@pytest.mark.slow  # three runs, the killed one in a subprocess
@pytest.mark.parametrize("zero", ["0", "3"])  # ZeRO-3: partitioned adapters and their state
def test_kill_and_resume_gives_identical_adapter_weights(world, tmp_path, capsys, zero):
    args = lambda out: _lora_args(world, out, "--steps", "3", "--zero-stage", zero)  # noqa: E731
    full, killed = full_and_killed_then_resumed(args, tmp_path, capsys)
    a, b = _adapter_weights(full), _adapter_weights(killed)
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def adapter(world, tmp_path_factory):
    """A trained adapter directory (two tiny steps, lr 1e-3)."""
    out = tmp_path_factory.mktemp("adapter") / "run"
    from tcopd.cli.main import main

    try:
        main(_lora_args(world, out))
    except SystemExit as e:
        assert not e.code
    return out / "checkpoints" / "step-000002" / "adapter"


def test_merge_export_equals_the_adapter_model(world, adapter, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tcopd.runtime.models.loading import load_causal_lm

    out = tmp_path / "merged"
    code, stdout, err = run_cli(
        ["prepare", "merge-lora", "--adapter", str(adapter), "--out", str(out)], capsys
    )
    assert code == 0, err
    assert not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out)  # a plain HF directory
    unmerged = PeftModel.from_pretrained(load_causal_lm(world.student), str(adapter))
    ids = torch.tensor([PROMPTS[0] + RESPONSES[0]])
    with torch.no_grad():
        a, b = merged(ids).logits, unmerged(ids).logits
        base = load_causal_lm(world.student)(ids).logits
    assert (a - b).abs().max() <= 1e-5
    assert (a - base).abs().max() > 1e-4  # the adapter is in there
    assert "max |Δ logit|" in stdout
    # an adapter directory wherever a model is expected: base + adapter, merged
    via_dir = load_causal_lm(adapter)
    with torch.no_grad():
        assert (via_dir(ids).logits - b).abs().max() <= 1e-5


def test_eval_and_score_take_an_adapter_directory(world, adapter, tmp_path, capsys):
    from tcopd.pipelines.eval import EvalConfig
    from tcopd.pipelines.eval import run as eval_run

    result = eval_run(
        EvalConfig(
            models=[str(adapter)],
            data=str(world.data),
            n=1,
            max_tokens=4,
            template="plain",
            out=str(tmp_path / "eval"),
            device="cpu",
        )
    )
    assert result.runs[0].summary["n"] == 1
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt_ids": PROMPTS[0], "response_ids": RESPONSES[0]}) + "\n")
    code, _, err = run_cli(
        ["score", "--student", str(adapter), "--reference", str(world.student),
         "--expert", str(world.expert), "--input", str(rows),
         "--output", str(tmp_path / "scored.jsonl"), "--template", "plain"],
        capsys,
    )  # fmt: skip
    assert code == 0, err


def test_missing_base_model_is_one_line(world, adapter, tmp_path, capsys):
    import shutil

    moved = tmp_path / "adapter"
    shutil.copytree(adapter, moved)
    cfg = json.loads((moved / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "gone")
    (moved / "adapter_config.json").write_text(json.dumps(cfg))
    code, _, err = run_cli(
        ["prepare", "merge-lora", "--adapter", str(moved), "--out", str(tmp_path / "m")], capsys
    )
    assert code == 1 and err.strip().startswith("error:") and "does not exist" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--lora-rank", "0"], "--lora-rank must be at least 1, got 0"),
        (["--lora-target-modules", "no_such_proj"], "peft cannot target"),
        (["--lora-target-modules", "lm_head"], "adapts the output head"),
        (["--loss", "dense", "--zero-stage", "3"], "--zero-stage 3 is not supported yet"),
    ],
)
def test_bad_lora_input_is_one_error_line(world, tmp_path, capsys, extra, needle):
    code, _, err = run_cli(_lora_args(world, tmp_path / "r", *extra), capsys)
    assert code == 1
    assert err.strip().startswith("error:") and needle in err, err
    assert "Traceback" not in err


def test_resume_refuses_other_lora_settings(world, adapter, capsys):
    run = adapter.parents[2]
    for flags, needle in (
        (["--lora-rank", "8"], "lora_rank: run has 4, flags say 8"),
        (["--no-lora"], "lora: run has True, flags say False"),
        (["--lora-alpha", "4"], "lora_alpha: run has 32.0, flags say 4.0"),
    ):
        code, _, err = run_cli(["train", "--resume", str(run), *flags], capsys)
        assert code == 1 and needle in err, err


def test_resume_of_a_run_older_than_lora_refuses_lora():
    """A config.yaml written before the LoRA settings existed had their defaults (lora off)."""
    from tcopd.pipelines.train.config import resume_conflicts

    old = {"student": "S", "lr": 0.001, "steps": 10}  # no lora keys at all
    assert resume_conflicts(old, {"lora": True, "steps": 20}) == [
        "lora: run has False, flags say True"
    ]
    assert resume_conflicts(old, {"lora": False, "lora_rank": None, "steps": 20}) == []
    assert resume_conflicts(old, {"lr": 0.5}) == ["lr: run has 0.001, flags say 0.5"]


@pytest.mark.dist  # two ranks under torchrun (~15 s each on 2 cores)
@pytest.mark.parametrize("zero_stage, loss", [("2", "sampled"), ("3", "sampled"), ("2", "dense")])
def test_two_ranks_end_with_identical_adapters(tmp_path, zero_stage, loss):
    import re
    import socket

    make_world(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = Path(sys.executable).parent / "torchrun"
    script = REPO / "tests" / "dist_train_script.py"
    p = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", str(port), str(script),
         str(tmp_path), "--steps", "1", "--batch-size", "4", "--zero-stage", zero_stage,
         "--lora", "true", "--lora-rank", "4", "--loss", loss],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "TCOPD_DEBUG": "1"},
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    digests = dict(re.findall(r"RANK (\d) DIGEST ([0-9a-f]+)", p.stdout))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"], p.stdout
    weights = load_file(tmp_path / "run/checkpoints/step-000001/adapter/adapter_model.safetensors")
    assert any(v.abs().max() > 0 for k, v in weights.items() if "lora_B" in k)

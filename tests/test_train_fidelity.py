"""`tcopd train` end to end on tiny models: normalization with a λ = 0 teacher, temperature,
recipes, and every setting reachable from the command line."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest
from train_fixtures import make_world, run_cli, tiny_args


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _args(world, out, *extra):
    args = tiny_args(world, out, "--steps", "1", *extra)
    return args


def test_zero_lambda_teacher_counts_in_k_under_all(world, tmp_path, capsys):
    """(1.5, 0): 'all' halves the expert's weight (1/K with K = 2), 'active' does not; the λ = 0
    teacher is never loaded (its path does not even exist)."""
    rows = {}
    for norm in ("active", "all"):
        args = _args(world, tmp_path / norm, "--teacher-normalization", norm)
        args[args.index("--lambdas") + 1] = "1.5,0"
        args[args.index("--anti-expert") + 1] = str(tmp_path / "no-such-model")
        code, _, err = run_cli(args, capsys)
        assert code == 0, err
        rows[norm] = _rows(tmp_path / norm)[0]
    assert "logratio/anti_expert" not in rows["all"]
    # same seed, same weights at step 1: the same rollouts and the same teacher log-ratio
    assert rows["all"]["logratio/expert"] == rows["active"]["logratio/expert"]
    assert rows["all"]["reward_mean"] == pytest.approx(
        0.5 * rows["active"]["reward_mean"], rel=1e-6
    )
    assert rows["active"]["reward_mean"] == pytest.approx(
        1.5 * rows["active"]["logratio/expert"], rel=1e-5
    )


def test_temperature_scores_every_model_at_the_rollout_temperature(world, tmp_path, capsys):
    """τ = 0.7: the trainer's π_old equals the sampler's tempered log-probs, so the IS weight is 1."""
    out = tmp_path / "t07"
    code, _, err = run_cli(
        _args(world, out, "--temperature", "0.7", "--samples-per-prompt", "4"), capsys
    )
    assert code == 0, err
    row = _rows(out)[0]
    assert row["is_weight_mean"] == pytest.approx(1.0, abs=1e-3)
    assert row["is_weight_max"] < 1.05
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["temperature"] == 0.7


def test_recipes_resolve_to_their_tables_and_flags_win():
    from tcopd.pipelines.train import RECIPES, TrainConfig, load_train_config

    defaults = TrainConfig(out="x")
    for name, table in RECIPES.items():
        cfg = load_train_config(None, {"out": "x", "recipe": name})
        assert cfg.recipe == name
        for f in dataclasses.fields(TrainConfig):
            want = table.get(f.name, getattr(defaults, f.name))
            if f.name == "recipe":
                continue
            assert getattr(cfg, f.name) == want, (name, f.name)
    cfg = load_train_config(None, {"out": "x", "recipe": "gopd", "lr": 3e-4, "batch_size": 8})
    assert (cfg.lr, cfg.batch_size, cfg.weight_decay) == (3e-4, 8, 0.01)
    # the toy recipe's dense loss takes its own lr, unless one is given
    dense = load_train_config(None, {"out": "x", "toy": True, "loss": "dense"})
    assert dense.lr == 5e-4 and dense.steps == RECIPES["toy"]["steps"]
    assert (
        load_train_config(None, {"out": "x", "toy": True, "loss": "dense", "lr": 2e-3}).lr == 2e-3
    )
    assert load_train_config(None, {"out": "x", "toy": True, "loss": "sampled"}).lr == 1e-3
    # --toy implies the toy recipe, an explicit recipe wins over it
    assert load_train_config(None, {"out": "x", "toy": True}).recipe == "toy"
    assert load_train_config(None, {"out": "x", "toy": True, "recipe": "paper"}).batch_size == 128
    # the paper's and G-OPD's values (docs/train.md's table)
    paper = load_train_config(None, {"out": "x", "recipe": "paper"})
    assert (paper.batch_size, paper.steps, paper.max_response_tokens, paper.lr) == (
        128,
        50,
        16384,
        1e-5,
    )
    gopd = load_train_config(None, {"out": "x", "recipe": "gopd"})
    assert (gopd.mini_batches, gopd.ppo_epochs, gopd.aggregation) == (1, 1, "seq-mean-token-mean")


def test_recipe_is_recorded_and_unknown_recipes_refused(world, tmp_path, capsys):
    out = tmp_path / "r"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("recipe: gopd\n")
    code, _, err = run_cli(
        _args(world, out, "--config", str(cfg), "--engine", "hf", "--dtype", "float32"), capsys
    )
    assert code == 0, err
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (
        saved["recipe"] == "gopd" and saved["weight_decay"] == 0.01 and saved["mini_batches"] == 1
    )
    assert saved["batch_size"] == 2  # the explicit flag won over the recipe's 1024
    code, _, err = run_cli(_args(world, tmp_path / "q", "--recipe", "nope"), capsys)
    assert code == 1 and "recipe" in err and "nope" in err


def test_every_setting_is_a_flag_or_listed_as_yaml_only(capsys):
    from tcopd.pipelines.train import TrainConfig

    code, out, _ = run_cli(["train", "--help"], capsys)
    assert code == 0
    text = " ".join(out.split())
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if (
            hints[f.name] is dict
            or typing.get_origin(hints[f.name]) is list
            and typing.get_args(hints[f.name]) == (dict,)
        ):  # mappings (lambda_table) and lists of mappings (served_teachers)
            assert f.name in text.split("YAML):", 1)[1], f.name
        else:
            # rich may cut a long flag with an ellipsis: match its first 17 characters
            assert flag[:17] in text, flag


def test_bad_values_are_refused_before_anything_loads(world, tmp_path, capsys):
    for extra, needle in (
        (["--temperature", "0"], "temperature must be > 0"),
        (["--top-p", "1.5"], "top_p must be in (0, 1]"),
        (["--mini-batches", "0"], "mini_batches must be at least 1"),
    ):
        code, _, err = run_cli(_args(world, tmp_path / "b", *extra), capsys)
        assert code == 1 and needle in err, err


def test_opd_on_policy_skips_ref_and_old_forwards_and_trains_the_same(world, tmp_path, capsys):
    """OPD (λ = β = 1) with one update per batch: π_ref is not scored (its terms cancel) and π_old
    comes from the update's forward; the weights equal those of a run that scores both."""
    import torch
    from safetensors.torch import load_file

    def weights(run):
        latest = (run / "checkpoints" / "latest").read_text().strip()
        return load_file(next((run / "checkpoints" / latest / "model").glob("*.safetensors")))

    rows = {}
    for mode in ("auto", "always"):
        args = _args(world, tmp_path / mode, "--mini-batches", "1", "--score-reference", mode)
        args = [a for a in args if a not in ("--anti-expert", str(world.anti_expert))]
        args[args.index("--lambdas") + 1] = "1"
        code, _, err = run_cli(args, capsys)
        assert code == 0, err
        rows[mode] = _rows(tmp_path / mode)[0]
    assert rows["auto"]["kl_ref"] is None and rows["always"]["kl_ref"] is not None
    assert rows["auto"]["is_weight_mean"] == pytest.approx(1.0, abs=1e-3)
    a, b = weights(tmp_path / "auto"), weights(tmp_path / "always")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_no_grade_leaves_accuracy_null(world, tmp_path, capsys):
    code, _, err = run_cli(_args(world, tmp_path / "ng", "--no-grade"), capsys)
    assert code == 0, err
    assert _rows(tmp_path / "ng")[0]["rollout_accuracy"] is None
    code, _, err = run_cli(
        _args(world, tmp_path / "ng2", "--no-grade", "--outcome-weight", "0.5"), capsys
    )
    assert code == 1 and "outcome_weight needs graded rollouts" in err


def test_dense_loss_runs_and_bad_input_is_refused(world, tmp_path, capsys):
    code, _, err = run_cli(_args(world, tmp_path / "d", "--loss", "dense"), capsys)
    assert code == 0, err
    row = _rows(tmp_path / "d")[0]
    assert row["loss"] > 0  # β·KL ≥ 0 at every position
    for extra, needle in (
        (["--teacher-placement", "shard"], "--loss dense needs every teacher's hidden states"),
        (["--chunk-size", str(10**9)], "lower --chunk-size"),
        (["--outcome-weight", "0.5"], "--outcome-weight applies to the sampled loss only"),
    ):
        code, _, err = run_cli(_args(world, tmp_path / "bad", "--loss", "dense", *extra), capsys)
        assert code == 1 and needle in err, err

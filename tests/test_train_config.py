"""``TrainConfig``'s checks that depend on what training computes: top_p and β (issue 21).

Config level only (nothing loads): the dataclass, the YAML + flags path, a sweep's grid, named
settings and base block, and the CLI's one error line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tcopd.cli.main import main
from tcopd.errors import ConfigError
from tcopd.pipelines.sweep.config import SweepConfig, expand_grid, run_train_config
from tcopd.pipelines.train import TrainConfig, load_train_config

TOP_P_NEEDLE = "training needs top_p = 1"


# ------------------------------------------------------------------------------------ top_p


@pytest.mark.parametrize("top_p", [0.8, 0.999, 1e-6])
def test_top_p_below_one_is_refused_naming_the_value_and_why(top_p):
    with pytest.raises(ConfigError) as e:
        TrainConfig(out="r", top_p=top_p)
    msg = str(e.value)
    assert f"--top-p {top_p}:" in msg and TOP_P_NEEDLE in msg
    assert "importance weights" in msg and "only in eval" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("top_p", [0.0, -0.1, 1.5])
def test_top_p_outside_the_unit_interval_keeps_its_range_error(top_p):
    with pytest.raises(ConfigError, match=r"top_p must be in \(0, 1\]"):
        TrainConfig(out="r", top_p=top_p)


def test_top_p_one_and_every_recipe_are_accepted():
    assert TrainConfig(out="r").top_p == 1.0
    for recipe in ("toy", "paper", "gopd"):
        assert load_train_config(None, {"out": "r", "recipe": recipe}).top_p == 1.0


def test_top_p_from_yaml_is_refused(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("top_p: 0.9\n")
    with pytest.raises(ConfigError, match=TOP_P_NEEDLE):
        load_train_config(str(path), {"out": "r"})


@pytest.mark.parametrize(
    "kwargs, setting",
    [
        ({"lambdas": ["1.5"], "grid": {"top_p": [1.0, 0.8]}}, "lambdas=1.5 top_p=0.8"),
        ({"settings": {"nucleus": {"top_p": 0.8}}}, "nucleus"),
        ({"lambdas": ["1.5"], "train": {"top_p": 0.8}}, "lambdas=1.5"),
    ],
)
def test_a_sweep_cannot_train_with_top_p_below_one(kwargs, setting, tmp_path: Path):
    cfg = SweepConfig(out=str(tmp_path), **kwargs)
    bad = [s for s in expand_grid(cfg) if s.name == setting]
    assert len(bad) == 1
    with pytest.raises(ConfigError) as e:
        run_train_config(cfg, bad[0], 0, tmp_path / "run")
    assert str(e.value).startswith(f"setting {setting}: --top-p 0.8")
    assert TOP_P_NEEDLE in str(e.value)


def test_the_cli_refuses_top_p_before_anything_loads(tmp_path: Path, capsys):
    # the student and data paths do not exist: the config check must come first
    with pytest.raises(SystemExit) as e:
        main(
            [
                "train",
                "--student",
                str(tmp_path / "no-student"),
                "--expert",
                str(tmp_path / "no-expert"),
                "--data",
                str(tmp_path / "no-data.jsonl"),
                "--top-p",
                "0.8",
                "--out",
                str(tmp_path / "run"),
            ]
        )
    err = capsys.readouterr().err
    assert e.value.code == 1
    assert TOP_P_NEEDLE in err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------- beta


@pytest.mark.parametrize(
    "loss, beta",
    [
        ("sampled", 0.0),
        ("sampled", 0.04),
        ("sampled", 1.0),
        ("dense", 0.5),
        ("dense", 1.0),
        ("dense", 3.0),
    ],
)
def test_beta_in_range_is_accepted(loss, beta):
    assert TrainConfig(out="r", loss=loss, beta=beta).beta == beta


@pytest.mark.parametrize(
    "loss, beta",
    [
        ("sampled", -0.5),
        ("sampled", -1e-9),
        ("sampled", float("nan")),
        ("sampled", float("inf")),
        ("dense", 0.0),
        ("dense", -1.0),
        ("dense", float("nan")),
    ],
)
def test_beta_out_of_range_is_one_line_naming_value_and_both_ranges(loss, beta):
    with pytest.raises(ConfigError) as e:
        TrainConfig(out="r", loss=loss, beta=beta)
    msg = str(e.value)
    assert msg.startswith(f"--beta {beta}:")
    assert ">= 0 with --loss sampled" in msg and "> 0 with --loss dense" in msg
    assert msg.endswith(f"this run has --loss {loss}")
    assert "\n" not in msg


def test_beta_from_flags_over_yaml(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("loss: dense\nbeta: 0.0\n")
    with pytest.raises(ConfigError, match=r"--beta 0.0: .*this run has --loss dense"):
        load_train_config(str(path), {"out": "r"})
    assert load_train_config(str(path), {"out": "r", "beta": 0.5}).beta == 0.5
    # the same β = 0 is fine for the sampled loss
    assert load_train_config(str(path), {"out": "r", "loss": "sampled"}).beta == 0.0

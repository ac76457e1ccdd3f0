"""Every shipped sweep config (examples/sweep_*.yaml) loads: its keys are settings of `tcopd
sweep` and `tcopd train`, every run of its grid resolves and its final evaluation is valid — a
typo in a registered study's file fails here, not an hour into the study. Nothing is run and no
model or data file is read."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcopd.errors import TcopdError
from tcopd.pipelines.sweep.config import (
    eval_values,
    expand_grid,
    find_baseline,
    load_sweep_config,
    run_train_config,
)

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("sweep_*.yaml"))


def test_there_are_examples():
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_run_of_the_example_resolves(path, tmp_path):
    cfg = load_sweep_config(path, {"out": str(tmp_path / "sweep")}, {})
    settings = expand_grid(cfg)
    find_baseline(settings, cfg.baseline)
    for setting in settings:
        for seed in cfg.seed_list:
            train = run_train_config(cfg, setting, seed, tmp_path / setting.dirname)
            assert train.seed == seed
    assert eval_values(cfg)


def test_a_misspelt_train_key_is_refused(tmp_path):
    """The check above can fail: a key train does not know is refused when a run resolves."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "settings:\n  a: {max_stalenes: 1}\nseeds: [0]\ntrain: {toy: true}\neval_benchmark: toy\n"
    )
    cfg = load_sweep_config(bad, {"out": str(tmp_path / "sweep")}, {})
    with pytest.raises(TcopdError):
        for setting in expand_grid(cfg):
            run_train_config(cfg, setting, 0, tmp_path / "run")

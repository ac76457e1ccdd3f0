"""Config loading: YAML + overrides, unknown keys, type mismatches (tcopd/config.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest
import yaml

from tcopd.config import field, load_config, to_dict, write_resolved
from tcopd.errors import ConfigError


@dataclass(frozen=True)
class _Cfg:
    lr: float = field(1e-6, help="learning rate")
    steps: int = field(50, help="steps")
    name: str | None = field(None, help="name")
    mode: Literal["a", "b"] = field("a", help="mode")
    tags: list[str] = field([], help="tags")
    table: dict = field({}, help="table")
    flag: bool = field(False, help="flag")


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("lr: 3.0e-4\nsteps: 7\nmode: b\ntags: [x, y]\ntable: {math: {e: 1.5}}\n")
    cfg = load_config(_Cfg, p, {"steps": 9, "name": None})
    assert cfg == _Cfg(
        lr=3e-4, steps=9, name=None, mode="b", tags=["x", "y"], table={"math": {"e": 1.5}}
    )
    out = write_resolved(cfg, tmp_path / "run" / "config.yaml")
    assert yaml.safe_load(out.read_text())["steps"] == 9


def test_int_is_accepted_for_float():
    assert load_config(_Cfg, None, {"lr": 1}).lr == 1.0


@pytest.mark.parametrize(
    "text, needle",
    [
        ("lrr: 1\n", "unknown config key 'lrr'"),
        ("steps: ten\n", "config key 'steps' expects an integer, got 'ten'"),
        ("lr: [1]\n", "config key 'lr' expects a number"),
        ("mode: c\n", "config key 'mode' must be one of 'a', 'b'"),
        ("flag: 3\n", "expects true/false"),
        ("- a\n- b\n", "must hold a mapping"),
        ("lr: [1\n", "is not valid YAML"),
    ],
)
def test_bad_yaml(tmp_path, text, needle):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(_Cfg, p)
    assert needle in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(_Cfg, tmp_path / "nope.yaml")


def test_to_dict_roundtrip():
    assert to_dict(_Cfg(tags=["a"]))["tags"] == ["a"]

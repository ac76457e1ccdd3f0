"""Teacher specification parsing and validation (core/teachers.py)."""

from __future__ import annotations

import re

import pytest
import torch

from tcopd.core.teachers import (
    TeacherSpec,
    active_teachers,
    build_teacher_specs,
    lambda_matrix,
    parse_lambdas,
    parse_teacher_arg,
    validate_lambda_table,
)
from tcopd.errors import ConfigError


def test_short_flags_pair_with_lambdas():
    specs = build_teacher_specs(expert="/m/math", anti_expert="/m/code", lambdas="1.5,-0.5")
    assert specs == [
        TeacherSpec("expert", "/m/math", 1.5),
        TeacherSpec("anti_expert", "/m/code", -0.5),
    ]


def test_expert_alone_defaults_to_opd():
    assert build_teacher_specs(expert="/m/math") == [TeacherSpec("expert", "/m/math", 1.0)]
    assert build_teacher_specs(expert="/m/math", lambdas="1.5")[0].lam == 1.5


def test_general_teacher_form_and_mixing():
    specs = build_teacher_specs(
        teachers=["math=/m/a:1.5", "code=/m/b:-0.5", "phys=/m/c"], lambdas="0.25"
    )
    assert [(s.name, s.path, s.lam) for s in specs] == [
        ("math", "/m/a", 1.5),
        ("code", "/m/b", -0.5),
        ("phys", "/m/c", 0.25),
    ]
    assert parse_teacher_arg("hub=Keven16/Qwen3-4B-Non-Thinking-RL-Math-Step500:1.5") == (
        "hub",
        "Keven16/Qwen3-4B-Non-Thinking-RL-Math-Step500",
        1.5,
    )
    # a path with a colon in a directory name, no λ
    assert parse_teacher_arg("x=/data/a:b/model") == ("x", "/data/a:b/model", None)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(expert="/a", anti_expert="/b", lambdas="1.5"), "--lambdas has 1 value"),
        (dict(expert="/a", lambdas="1.5,-0.5"), "--lambdas has 2 value"),
        (dict(expert="/a", anti_expert="/b", lambdas="1.5,abc"), "'abc' is not a number"),
        (dict(expert="/a", anti_expert="/b", lambdas="0,0"), "all λ are zero"),
        (dict(teachers=["m=/a:1", "m=/b:2"]), "duplicate teacher name 'm'"),
        (dict(teachers=["m=/a:nope"]), "'nope' is not a number"),
        (dict(teachers=["student=/a:1"]), "reserved"),
        (dict(expert="/a", anti_expert="/b"), "no λ for teacher(s) expert, anti_expert"),
        (dict(), "no teacher given"),
        (dict(expert="/a", lambdas="1.5,,2"), "comma-separated"),
        (dict(expert="/a", lambdas="nan"), "finite"),
    ],
)
def test_bad_specs_name_the_offending_value(kwargs, needle):
    with pytest.raises(ConfigError) as e:
        build_teacher_specs(**kwargs)
    assert needle in str(e.value)


def test_lambda_table_validation_and_matrix():
    specs = build_teacher_specs(teachers=["math=/a:1.5", "code=/b:-0.5"])
    table = validate_lambda_table(
        {"math": {"math": 1.5, "code": -0.5}, "code": {"code": 1.5}}, specs
    )
    assert table["code"] == {"math": 0.0, "code": 1.5}
    lam = lambda_matrix(specs, ["code", "math", None, "other"], table)
    assert lam.tolist() == [[0.0, 1.5], [1.5, -0.5], [1.5, -0.5], [1.5, -0.5]]
    with pytest.raises(ConfigError, match="'bio', which is not configured"):
        validate_lambda_table({"math": {"bio": 1.0}}, specs)
    with pytest.raises(ConfigError, match="all λ are zero for this domain"):
        validate_lambda_table({"math": {"math": 0}}, specs)
    with pytest.raises(ConfigError, match="finite number"):
        validate_lambda_table({"math": {"math": "x"}}, specs)


def test_active_teachers_drop_zero_lambda_unless_a_domain_uses_them():
    specs = build_teacher_specs(teachers=["math=/a:1.5", "code=/b:0"])
    assert [s.name for s in active_teachers(specs)] == ["math"]
    assert [s.name for s in active_teachers(specs, {"code": {"math": 0.0, "code": 1.0}})] == [
        "math",
        "code",
    ]


def test_parse_lambdas():
    assert parse_lambdas("1.5, -0.5") == [1.5, -0.5]
    assert torch.tensor(parse_lambdas("1e-1")).item() == pytest.approx(0.1)


# ------------------------------------------------------------------ teachers given by server URL
@pytest.mark.parametrize(
    "arg, want",
    [
        ("code=http://host:8001:-0.5", ("code", "http://host:8001", -0.5)),
        ("code=http://host:8001", ("code", "http://host:8001", None)),  # the port is not a λ
        ("code=https://host:8001/v1/:2", ("code", "https://host:8001", 2.0)),  # root, not /v1
        ("code=http://10.0.0.2:8001/team:1", ("code", "http://10.0.0.2:8001/team", 1.0)),
        ("c=http://a:8001,http://[::1]:8002:-1", ("c", "http://a:8001,http://[::1]:8002", -1.0)),
    ],
)
def test_url_teacher_colons(arg, want):
    assert parse_teacher_arg(arg) == want


def test_url_teachers_become_served_specs_and_mix_with_paths():
    specs = build_teacher_specs(
        expert="/m/math",
        anti_expert="http://gpu-b:8001",
        teachers=["code=http://gpu-c:8001,http://gpu-d:8001:-0.25"],
        served=[{"name": "phys", "url": ["http://gpu-e:8001/"], "lam": 0.5}],
        lambdas="1.5,-0.5",
    )
    assert [(s.name, s.lam, s.urls) for s in specs] == [
        ("expert", 1.5, ()),
        ("anti_expert", -0.5, ("http://gpu-b:8001",)),
        ("code", -0.25, ("http://gpu-c:8001", "http://gpu-d:8001")),
        ("phys", 0.5, ("http://gpu-e:8001",)),
    ]
    assert [s.served for s in specs] == [False, True, True, True]
    # the display path of a served teacher is its URLs, which parse back to the same spec
    again = build_teacher_specs(teachers=[f"{s.name}={s.path}:{s.lam}" for s in specs])
    assert again == specs


def test_served_entry_takes_lambda_from_lambdas_when_left_out():
    specs = build_teacher_specs(served=[{"name": "code", "url": "http://h:1"}], lambdas="-0.5")
    assert specs == [TeacherSpec("code", "http://h:1", -0.5, ("http://h:1",))]


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(teachers=["code=http://host:-0.5"]), "the port is required"),
        (dict(teachers=["code=http://host"]), "the port is required"),
        (dict(teachers=["code=http://h:80x:1"]), "unexpected 'x:1'"),
        (dict(teachers=["code=http://h:80:x"]), "'x' is not a number"),
        (dict(served=[{"name": "c"}]), "must be a mapping with 'name', 'url'"),
        (dict(served=[{"name": "c", "url": "http://h:1", "lambda": 1}]), "unknown key 'lambda'"),
        (dict(served=[{"name": "c", "url": "http://h:1:2"}]), "put λ in 'lam'"),
        (dict(served=[{"name": "c", "url": [], "lam": 1}]), "a URL or a list of URLs"),
    ],
)
def test_url_teacher_errors(kwargs, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        build_teacher_specs(**kwargs)

"""Configuration: frozen dataclasses, a YAML file, command-line overrides.

Each pipeline defines its own frozen dataclass (every field with a ``help`` in its metadata).
:func:`load_config` builds one from an optional YAML file and a dict of overrides (the flags the
user actually passed), checking keys and types so that a typo or a wrong type is one clear
``error:`` line instead of a surprise mid-run. :func:`write_resolved` writes the result next to
the outputs it produced.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from tcopd.errors import ConfigError
from tcopd.runtime.data.io import atomic_write_text

C = TypeVar("C")


def field(default: Any = dataclasses.MISSING, *, help: str, **kw: Any) -> Any:
    """A dataclass field with a one-line help (shown in docs and by ``--help``)."""
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(
            default_factory=lambda: type(value)(value), metadata={"help": help}, **kw
        )
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; convert the harmless cases (int → float, list → tuple)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, key)
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"config key {key!r} must be one of {choices}, got {value!r}")
        return value
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        return _coerce_sequence(value, tp, key)
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"config key {key!r} expects a mapping, got {value!r} ({type(value).__name__})"
            )
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {key!r} expects a mapping, got {value!r}")
        return build(tp, value, prefix=f"{key}.")
    return _coerce_scalar(value, tp, key)


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    """The first member of the union that accepts ``value`` (``None`` for an optional)."""
    args = get_args(tp)
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, key)
        except ConfigError:
            pass
    raise ConfigError(f"config key {key!r} expects {_type_name(tp)}, got {value!r}")


def _coerce_sequence(value: Any, tp: Any, key: str) -> Any:
    """A list (or, for a tuple annotation, a tuple) of the coerced items."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(
            f"config key {key!r} expects a list, got {value!r} ({type(value).__name__})"
        )
    args = get_args(tp)
    inner = args[0] if args else Any
    items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if (get_origin(tp) is tuple or tp is tuple) else items


# Scalar annotations: what the error says is expected, and the accepted types (a bool is an int
# in Python: refused for int, float and str).
_SCALARS: dict[type, tuple[str, tuple[type, ...]]] = {
    bool: ("true/false", (bool,)),
    float: ("a number", (int, float)),
    int: ("an integer", (int,)),
    str: ("a string", (str,)),
}


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    """bool, float (ints accepted), int, str: checked; anything else passes as it is."""
    if tp not in _SCALARS:
        return value
    expects, kinds = _SCALARS[tp]
    if not isinstance(value, kinds) or (tp is not bool and isinstance(value, bool)):
        raise ConfigError(
            f"config key {key!r} expects {expects}, got {value!r} ({type(value).__name__})"
        )
    return float(value) if tp is float else value
    return value


def build(cls: type[C], values: Mapping[str, Any], prefix: str = "") -> C:
    """Instantiate dataclass ``cls`` from ``values``, rejecting unknown keys and wrong types.

    ``cls.KEY_ALIASES`` (``{alias: key}``, optional): other names a key may be given under (one
    name per setting across commands; the old names keep working)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    aliases: dict[str, str] = getattr(cls, "KEY_ALIASES", {})
    if aliases:
        renamed: dict[str, Any] = {}
        for k, v in values.items():
            key = aliases.get(k, k)
            if key in renamed:
                raise ConfigError(f"{prefix}{key!r} is given twice (also as {prefix}{k!r})")
            renamed[key] = v
        values = renamed
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]!r}; known keys: {', '.join(sorted(fields))}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in values.items()}
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing required setting {prefix}{missing[0]!r}")
    return cls(**kwargs)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; missing file, bad YAML and non-mappings are one-line errors."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            f"config file {str(p)!r} is not valid YAML{where}: {getattr(e, 'problem', e)}"
        )
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {str(p)!r} must hold a mapping of settings, got {type(data).__name__}"
        )
    return data


def load_config(
    cls: type[C], path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> C:
    """YAML file (optional) first, then the overrides whose value is not None."""
    values: dict[str, Any] = read_yaml(path) if path else {}
    for k, v in (overrides or {}).items():
        if v is not None:
            values[k] = v
    return build(cls, values)


def field_defaults(cls: type) -> dict[str, Any]:
    """Each field's default of dataclass ``cls`` (fields without one are left out)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def to_dict(config: Any) -> dict[str, Any]:
    """Plain-data view of a config (tuples become lists) for YAML/JSON."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(config)


def write_resolved(config: Any, path: str | Path) -> Path:
    """Write the resolved configuration as YAML (atomically) and return its path."""

    return atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


def help_of(cls: type, name: str) -> str:
    """The one-line help of field ``name`` of dataclass ``cls``."""
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(name)

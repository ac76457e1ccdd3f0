"""Shared CLI options (``Annotated`` aliases) and consoles. Only cli/ imports typer and rich."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer
from rich.console import Console

from tcopd.config import field_defaults

console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", help="YAML file of settings; flags given on the command line override it."
    ),
]


# ---------------------------------------------------------------- flags generated from a config
def default_text(value: Any) -> str:
    """A setting's value as ``--help`` and the docs' tables show it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) if value else "none"
    if isinstance(value, dict):
        return "{}" if not value else str(value)
    return str(value) if value != "" else '""'


def with_defaults(
    help: str,
    name: str,
    defaults: dict[str, Any],
    recipes: dict[str, dict[str, Any]] | None = None,
) -> str:
    """``help`` with ``[default: X; recipe R: Y, …]`` (the recipes that change the setting)."""
    if name not in defaults:
        return help
    text = f"default: {default_text(defaults[name])}"
    changed = [
        f"{r}: {default_text(values[name])}"
        for r, values in (recipes or {}).items()
        if name in values and values[name] != defaults[name]
    ]
    if changed:
        text += "; recipe " + ", ".join(changed)
    return f"{help} \\[{text}]"  # escaped: rich would read [..] as markup and drop it


Flag = str | tuple[str, ...]  # a flag, or the flag and its aliases (the first is the name)


def _flag_annotation(name: str, tp: Any, help: str, flag: Flag | None = None) -> Any | None:
    """``Annotated[type | None, typer.Option(...)]`` for a config field, or None (YAML only)."""
    names = (flag,) if isinstance(flag, str) else tuple(flag or ())
    flag, aliases = (names[0] if names else "--" + name.replace("_", "-")), names[1:]
    if aliases:
        help = f"{help} (alias: {', '.join(aliases)})"
    args = [a for a in get_args(tp) if a is not type(None)]
    base = tp
    if get_origin(tp) in (Union, UnionType):
        base = args[0] if len(args) == 1 else (str if str in args else None)
    if get_origin(base) is Literal:
        choices = ", ".join(str(c) for c in get_args(base))
        help = f"{help} \\[{choices}]"  # escaped: rich would read [..] as markup and drop it
        return Annotated[str | None, typer.Option(flag, *aliases, help=help, show_default=False)]
    if base is bool:
        return Annotated[
            bool | None, typer.Option(f"{flag}/--no-{flag[2:]}", help=help, show_default=False)
        ]
    if get_origin(base) is list and get_args(base) == (str,):
        return Annotated[
            list[str] | None, typer.Option(flag, *aliases, help=help, show_default=False)
        ]
    if base in (int, float, str):
        return Annotated[base | None, typer.Option(flag, *aliases, help=help, show_default=False)]
    return None


def yaml_only(cls: type) -> list[str]:
    """The fields of ``cls`` that have no flag (set them in the ``--config`` YAML)."""
    hints = typing.get_type_hints(cls, include_extras=False)
    return [
        f.name
        for f in dataclasses.fields(cls)
        if _flag_annotation(f.name, hints[f.name], "") is None
    ]


def config_flags(
    cls: type,
    *,
    skip: tuple[str, ...] = (),
    flag_names: dict[str, Flag] | None = None,
    defaults: dict[str, Any] | None = None,
    recipes: dict[str, dict[str, Any]] | None = None,
):
    """Decorate ``fn(flags: dict, **own)`` into a typer command with one flag per field of ``cls``.

    Each flag's help is the field's own (``tcopd.config.field``) and its default (the field's,
    or ``defaults[name]``), with the value of each recipe that changes it; every flag defaults
    to None ("not given"), so ``flags`` holds exactly what the user typed, ready for the YAML
    merge. ``fn``'s own keyword parameters (``--config``, ``--resume``, ...) are kept as they
    are. ``flag_names`` renames a field's flag (``{"teachers": "--teacher"}``), or gives it and its
    aliases (``{"placement": ("--teacher-placement", "--placement")}``).
    """
    hints = typing.get_type_hints(cls, include_extras=False)
    shown = field_defaults(cls) if defaults is None else defaults

    def decorate(fn: Callable[..., None]) -> Callable[..., None]:
        own = [
            p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "flags"
        ]
        names: list[str] = []
        params: list[inspect.Parameter] = []
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            help = with_defaults(f.metadata.get("help", ""), f.name, shown, recipes)
            ann = _flag_annotation(f.name, hints[f.name], help, (flag_names or {}).get(f.name))
            if ann is None:
                continue
            names.append(f.name)
            params.append(
                inspect.Parameter(
                    f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ann
                )
            )

        @functools.wraps(fn)
        def command(**kw: Any) -> None:
            flags = {n: kw.pop(n) for n in names}
            for n, v in flags.items():
                if isinstance(v, list) and not v:
                    flags[n] = None
            return fn(flags, **kw)

        own_kw = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        command.__signature__ = inspect.Signature(params + own_kw)  # type: ignore[attr-defined]
        command.__annotations__ = {}
        del command.__wrapped__  # typer must read the generated signature, not fn's
        return command

    return decorate


# ------------------------------------------------------------------- the docs' settings tables
def settings_table(
    cls: type,
    *,
    skip: tuple[str, ...] = (),
    flag_names: dict[str, Flag] | None = None,
    defaults: dict[str, Any] | None = None,
    recipes: dict[str, dict[str, Any]] | None = None,
) -> str:
    """Markdown: one row per setting of ``cls`` — its flag (or "YAML only"), YAML key, default,
    the recipes that change it, and its help; what ``scripts/docs_tables.py`` writes into the
    docs (and a test keeps them equal)."""
    hints = typing.get_type_hints(cls, include_extras=False)
    shown = field_defaults(cls) if defaults is None else defaults
    head = "| flag | YAML key | default |" + (" recipes |" if recipes else "") + " what |"
    rows = [head, "|" + "---|" * (5 if recipes else 4)]
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        given = (flag_names or {}).get(f.name, "--" + f.name.replace("_", "-"))
        names = (given,) if isinstance(given, str) else given
        has_flag = _flag_annotation(f.name, hints[f.name], "") is not None
        flag = names[0]
        if has_flag and _is_bool(hints[f.name]):
            flag = f"{flag}/--no-{flag[2:]}"
        shown_flag = f"`{flag}`" + "".join(f" (alias `{a}`)" for a in names[1:])
        aliases = [a for a, key in getattr(cls, "KEY_ALIASES", {}).items() if key == f.name]
        key = f"`{f.name}`" + "".join(f" (alias `{a}`)" for a in aliases)
        cells = [shown_flag if has_flag else "YAML only", key]
        cells.append(f"`{default_text(shown[f.name])}`" if f.name in shown else "required")
        if recipes:
            changed = [
                f"{r}: `{default_text(v[f.name])}`"
                for r, v in recipes.items()
                if f.name in v and v[f.name] != shown.get(f.name)
            ]
            cells.append(", ".join(changed))
        cells.append(f.metadata.get("help", "").replace("|", "\\|"))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def _is_bool(tp: Any) -> bool:
    args = [a for a in get_args(tp) if a is not type(None)]
    return tp is bool or (get_origin(tp) in (Union, UnionType) and args == [bool])

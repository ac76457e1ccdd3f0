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

console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", help="YAML file of settings; flags given on the command line override it."
    ),
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed (reaches the sampler).")]


# ---------------------------------------------------------------- flags generated from a config
def _flag_annotation(name: str, tp: Any, help: str, flag: str | None = None) -> Any | None:
    """``Annotated[type | None, typer.Option(...)]`` for a config field, or None (YAML only)."""
    flag = flag or "--" + name.replace("_", "-")
    args = [a for a in get_args(tp) if a is not type(None)]
    base = tp
    if get_origin(tp) in (Union, UnionType):
        base = args[0] if len(args) == 1 else (str if str in args else None)
    if get_origin(base) is Literal:
        choices = ", ".join(str(c) for c in get_args(base))
        help = f"{help} \\[{choices}]"  # escaped: rich would read [..] as markup and drop it
        return Annotated[str | None, typer.Option(flag, help=help, show_default=False)]
    if base is bool:
        return Annotated[
            bool | None, typer.Option(f"{flag}/--no-{flag[2:]}", help=help, show_default=False)
        ]
    if get_origin(base) is list and get_args(base) == (str,):
        return Annotated[list[str] | None, typer.Option(flag, help=help, show_default=False)]
    if base in (int, float, str):
        return Annotated[base | None, typer.Option(flag, help=help, show_default=False)]
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
    cls: type, *, skip: tuple[str, ...] = (), flag_names: dict[str, str] | None = None
):
    """Decorate ``fn(flags: dict, **own)`` into a typer command with one flag per field of ``cls``.

    Each flag's help is the field's own (``tcopd.config.field``); every flag defaults to None
    ("not given"), so ``flags`` holds exactly what the user typed, ready for the YAML merge.
    ``fn``'s own keyword parameters (``--config``, ``--resume``, ...) are kept as they are.
    ``flag_names`` renames a field's flag (``{"teachers": "--teacher"}``).
    """
    hints = typing.get_type_hints(cls, include_extras=False)

    def decorate(fn: Callable[..., None]) -> Callable[..., None]:
        own = [
            p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "flags"
        ]
        names: list[str] = []
        params: list[inspect.Parameter] = []
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            help = f.metadata.get("help", "")
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

"""The ``tcopd`` command. The only layer that imports typer and rich (with cli/options.py).

Errors: a :class:`~tcopd.errors.TcopdError` becomes one red ``error: ...`` line on stderr and
exit code 1; usage errors keep typer's exit code 2; ``TCOPD_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import os
import sys

import typer

from tcopd import __version__
from tcopd.cli.options import err_console
from tcopd.errors import TcopdError

app = typer.Typer(
    name="tcopd",
    help="Teacher-Contrastive On-Policy Distillation: prepare data, score, train, eval, analyze, demo, serve teachers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tcopd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """tcopd: distil a student from experts (λ > 0) and anti-experts (λ < 0), token by token."""


def _register() -> None:
    # Each subcommand lives in its own module; importing it here adds it to `app`.
    from tcopd.cli import commands  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    _register()
    debug = os.environ.get("TCOPD_DEBUG", "") not in ("", "0")
    try:
        app(args=argv, prog_name="tcopd")
    except TcopdError as e:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/bold red] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err_console.print("[bold red]error:[/bold red] interrupted", highlight=False)
        sys.exit(130)

"""``tcopd serve-teacher``: a vLLM server fit to score a teacher (docs/serving.md).

Optional: any ``vllm serve`` started with the same flags works. This one adds what scoring
needs (:func:`tcopd.runtime.scoring.served.server_command`), a KV cache of 4 GiB on a machine
without CUDA unless ``VLLM_CPU_KVCACHE_SPACE`` says otherwise (:func:`served.server_env`),
checks the Python and the port first,
prints the URL to pass as ``--teacher NAME=URL:LAMBDA`` once the server answers, and stops the
server on Ctrl-C.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Annotated

import typer

from tcopd.cli.main import app
from tcopd.cli.options import console
from tcopd.runtime.scoring import served


@app.command(
    "serve-teacher",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog="Flags after MODEL that tcopd does not know go to vLLM unchanged "
    "(e.g. --tensor-parallel-size 2 --gpu-memory-utilization 0.9).",
)
def serve_teacher(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Teacher model: local HF directory or Hub id.")],
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8001,
    host: Annotated[
        str, typer.Option("--host", help="Interface to bind (0.0.0.0: reachable from other nodes).")
    ] = "0.0.0.0",
    dtype: Annotated[
        str, typer.Option("--dtype", help="Weights dtype for vLLM: auto, float32, bfloat16, ...")
    ] = "auto",
    max_model_len: Annotated[
        int | None,
        typer.Option(
            "--max-model-len",
            help="Longest prompt + response + 1 (default: the model's).",
            show_default=False,
        ),
    ] = None,
    python: Annotated[
        str | None,
        typer.Option(
            "--python",
            help="Interpreter with vLLM installed (default: this one).",
            show_default=False,
        ),
    ] = None,
    max_logprobs: Annotated[
        int,
        typer.Option(
            "--max-logprobs",
            help="Most log-probs per position a request may ask for: the dense loss asks for "
            "--served-top-k (16); -1: whole rows (its exact mode, small vocabularies).",
        ),
    ] = 64,
) -> None:
    """Serve a teacher with vLLM's OpenAI-compatible server; prints the URL to pass to tcopd.

    [b]Example[/b]: [cyan]tcopd serve-teacher /models/code --port 8001 --dtype bfloat16[/cyan], then
    [cyan]tcopd train ... --teacher code=http://HOST:8001:-0.5[/cyan]
    """
    python = python or sys.executable
    served.check_server_python(python)
    served.check_port_free(host, port)
    cmd = served.server_command(
        model, port, host, dtype, max_model_len, python, ctx.args, max_logprobs
    )
    url = served.public_url(host, port)
    env, added = _environment()
    console.print(f"starting: {added}{' '.join(cmd)}", highlight=False, soft_wrap=True)
    process = subprocess.Popen(cmd, env=env)
    try:
        local = f"http://{_loopback(host)}:{port}"
        seconds = served.wait_until_ready(local, process)
        console.print(
            f"[bold green]ready[/bold green] after {seconds:.0f} s: {url}  "
            f"(pass --teacher NAME={url}:LAMBDA; Ctrl-C stops the server)",
            highlight=False,
            soft_wrap=True,
        )
        process.wait()
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    if process.returncode not in (0, -15, None):
        raise typer.Exit(process.returncode)


def _environment() -> tuple[dict[str, str], str]:
    """The server's environment (:func:`served.server_env`) and what it adds, as ``K=V `` text."""
    import torch  # (here: --help should not wait for it)

    env = served.server_env(os.environ, torch.cuda.is_available())
    return env, "".join(f"{k}={v} " for k, v in env.items() if k not in os.environ)


def _loopback(host: str) -> str:
    """Where this machine reaches a server bound to ``host`` (the wildcards mean loopback)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host

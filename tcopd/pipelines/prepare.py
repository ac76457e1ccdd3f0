"""``tcopd prepare``: write training/evaluation data in verl's row format (+ ``domain``).

Sources: the paper's datasets by name (deepmath, gopd-math, aime24, aime25, math500; from the
Hub or ``from_path`` in the Hub's column layout), any local file (``file``), the toy world
(``toy``: data *and* models, see :mod:`tcopd.runtime.toy`) and small arithmetic tasks for real
models (``arith --task NAME``: :mod:`tcopd.runtime.data.arith`, answers read as the last number).

Choices:
- Rows keep the prompt as chat messages (verl's format); the template is applied where the
  model is run. With ``template`` set, the rendered text is also stored in
  ``extra_info.prompt_text`` so the exact model input can be inspected.
- Output is ``<out>/<name>.parquet`` plus a JSONL copy, each written atomically; an empty result
  is an error, never an empty file.
- Control characters: the benchmarks and math-domain ``file`` rows share one rule
  (:func:`tcopd.runtime.data.datasets.repair_control_chars`): lost LaTeX escapes are repaired and
  the repaired rows counted in ``PrepareResult.repaired`` (and a note); anything else is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tcopd.config import field as setting
from tcopd.errors import ConfigError
from tcopd.progress import Progress
from tcopd.runtime.data import arith
from tcopd.runtime.data import datasets as ds
from tcopd.runtime.data.io import tcopd_cache_dir, write_jsonl, write_parquet
from tcopd.runtime.data.prompts import (
    DEFAULT_INSTRUCTION,
    PLAIN_FORMAT,
    check_plain_format,
    render_prompt,
)
from tcopd.runtime.models.loading import load_tokenizer
from tcopd.runtime.toy import default_root, ensure_toy
from tcopd.runtime.toy.build import read_manifest
from tcopd.runtime.toy.shipped import shipped_table

NAMES = (*ds.SOURCES, "file", "toy", "arith")


@dataclass(frozen=True)
class PrepareConfig:
    source: str = setting(
        help="What to prepare: deepmath, gopd-math, aime24, aime25, math500, file, toy, arith."
    )
    out: str | None = setting(
        None, help="Output directory (toy: the world's directory, default under the user cache)."
    )
    from_path: str | None = setting(
        None,
        help="Local copy of a named source in the Hub's column layout (file or directory); "
        "aime24/aime25 accept a 'problem' or a 'question' column.",
    )
    path: str | None = setting(None, help="Input file for source 'file' (jsonl/json/parquet/csv).")
    name: str | None = setting(
        None, help="Output file name stem (default: the source name, or the input file's stem)."
    )
    question_field: str = setting("question", help="Question column of a 'file' source.")
    answer_field: str = setting("answer", help="Answer column of a 'file' source.")
    domain: str = setting(
        "math", help="Domain label of a 'file' source's rows (math rows get control-char repair)."
    )
    min_difficulty: float = setting(6.0, help="deepmath: keep rows with difficulty >= this.")
    instruction: str = setting(
        DEFAULT_INSTRUCTION, help="Sentence appended to every question (G-OPD's by default)."
    )
    template: Literal["chat", "plain"] | None = setting(
        None, help="Also store the rendered prompt text: chat or plain."
    )
    tokenizer: str | None = setting(
        None, help="Tokenizer whose chat template renders prompts (template chat)."
    )
    plain_format: str = setting(
        PLAIN_FORMAT, help="Plain-text prompt format; must contain {content}."
    )
    seed: int = setting(0, help="toy: random seed of the build (same seed, same world).")
    force: bool = setting(
        False, help="toy: reinstall (or rebuild) even if a world with this seed is present."
    )
    rebuild: bool = setting(
        False,
        help="toy: build the world from its recipe instead of installing the shipped one "
        "(default out: the cache directory + '-rebuild').",
    )
    small: bool = setting(False, help="toy: build the small, seconds-fast world (for tests).")
    task: str = setting(
        "add20", help=f"arith: which task ({', '.join(arith.TASKS)}; docs/prepare.md)."
    )
    test_size: int = setting(200, help="arith: held-out problems (the rest are training prompts).")


@dataclass(frozen=True)
class PrepareResult:
    source: str
    files: list[Path]
    rows: int
    read: int
    repaired: int = 0
    notes: list[str] = field(default_factory=list)
    example_prompt: str | None = None
    toy_table: dict[str, Any] | None = None
    toy_reused: bool = False
    shipped_table: dict[str, Any] | None = None  # --rebuild: the shipped world's table, to compare


def run(config: PrepareConfig, progress: Progress | None = None) -> PrepareResult:
    if config.source not in NAMES:
        raise ConfigError(f"unknown dataset {config.source!r}; choose one of {', '.join(NAMES)}")
    if config.source == "toy":
        return _run_toy(config, progress)
    if config.source == "arith":
        return _run_arith(config)
    if config.out is None:
        raise ConfigError(f"tcopd prepare {config.source} needs --out DIR")
    if config.template == "plain":
        check_plain_format(config.plain_format)
    tokenizer = _tokenizer(config)

    report = ds.LoadReport()
    if config.source == "file":
        if not config.path:
            raise ConfigError("tcopd prepare file needs the input PATH (jsonl/json/parquet/csv)")
        rows = ds.load_file(
            config.path,
            question_field=config.question_field,
            answer_field=config.answer_field,
            domain=config.domain,
            instruction=config.instruction,
            report=report,
        )
        stem = config.name or Path(config.path).stem
    else:
        if config.path:
            raise ConfigError(
                f"a PATH argument is only for 'file'; for {config.source} use --from PATH"
            )
        rows = ds.load_source(
            config.source,
            config.from_path,
            min_difficulty=config.min_difficulty,
            instruction=config.instruction,
            report=report,
        )
        stem = config.name or config.source

    example = None
    if config.template is not None:
        for r in rows:
            r["extra_info"]["prompt_text"] = render_prompt(
                r["prompt"], tokenizer, config.template, config.plain_format
            )
        example = rows[0]["extra_info"]["prompt_text"]

    out = Path(config.out)
    files = [out / f"{stem}.parquet", out / f"{stem}.jsonl"]
    for f in files:
        if config.path and f.resolve() == Path(config.path).resolve():
            raise ConfigError(
                f"output {str(f)!r} would overwrite the input; pass --name or another --out"
            )
    write_parquet(files[0], rows)
    write_jsonl(files[1], rows)
    return PrepareResult(
        config.source, files, len(rows), report.read, report.repaired, list(report.notes), example
    )


def _run_arith(config: PrepareConfig) -> PrepareResult:
    """One arith task's train and test rows (default out: the cache's ``arith/<task>``)."""
    out = Path(config.out).expanduser() if config.out else tcopd_cache_dir() / "arith" / config.task
    files = arith.write_task(config.task, out, config.seed, config.test_size)
    train, test = arith.split(config.task, config.seed, config.test_size)
    note = (
        f"arith task {config.task} ({arith.TASKS[config.task].help}), seed {config.seed}: "
        f"{len(train)} training and {len(test)} held-out problems, answers read as the last number"
    )
    return PrepareResult(
        "arith", files, len(train) + len(test), len(train) + len(test), notes=[note]
    )


def _tokenizer(config: PrepareConfig) -> Any:
    if config.template != "chat":
        return None
    if not config.tokenizer:
        raise ConfigError(
            "--template chat needs --tokenizer PATH (a tokenizer with a chat template)"
        )

    return load_tokenizer(config.tokenizer)


def _run_toy(config: PrepareConfig, progress: Progress | None) -> PrepareResult:
    root = Path(config.out) if config.out else default_root()
    if config.rebuild and not config.out:
        root = root.with_name(root.name + "-rebuild")
    size = "small" if config.small else "full"
    before = read_manifest(root)
    world = ensure_toy(
        root,
        seed=config.seed,
        force=config.force,
        size=size,
        progress=progress,
        rebuild=config.rebuild,
    )
    after = read_manifest(root)
    reused = before is not None and before == after and not config.force
    files = [
        world.train_file,
        world.test_file,
        *world.test_files.values(),
        world.student,
        world.expert,
        world.anti_expert,
        world.table_json,
        world.table_md,
    ]
    rows = len(ds.load_prepared(world.train_file))
    origin = (after or {}).get("origin", "built")
    notes = [
        f"toy world ({size}, seed {config.seed}, {origin}) at {root}"
        + (" (reused)" if reused else "")
    ]
    return PrepareResult(
        "toy",
        files,
        rows,
        rows,
        notes=notes,
        toy_table=world.table(),
        toy_reused=reused,
        shipped_table=shipped_table("toy") if config.rebuild else None,
    )

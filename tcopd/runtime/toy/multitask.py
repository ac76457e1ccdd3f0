"""Build (or reuse) the multi-task toy world: two domains, two specialised teachers, one student.

The world of issue 17's question (does teacher-contrastive feedback reduce interference when a
student learns several domains from several specialised teachers?). Same generators, tokenizer,
model shape and trainer as the single-task world (:mod:`tcopd.runtime.toy.build`); docs/prepare.md
has the measured table.

- *student*: trained from scratch, weak on **both** domains through behaviour, not missing skill.
  Math: a bare guessed ``\\boxed{N}`` or concise working whose operation per step is a coin flip
  (as the single-task student). Code: a bare guess or a concise, *correct* trace of every
  assignment that then boxes the value of a variable picked at random — it does not read which
  variable is printed. Every equation it sees is right, so distillation fixes a behaviour.
- *math_teacher*: the student further trained on correct, concise math, and on **verbose, wrong**
  code (a restatement of every line and a plan that end in a guess, otherwise verbose working with
  wrong operations): strong on math, long and wrong on code.
- *code_teacher*: the mirror image: correct, concise code and verbose, wrong math (the single-task
  anti-expert's math, the paper's coding teacher).

Training uses one torch thread whatever the machine has (``BUILD_THREADS``): fast enough for
these 0.56M-parameter models, never stalled by a busy box, and the same weights for the same seed
on the same machine whatever ``OMP_NUM_THREADS`` says.

The table is measured on each domain's held-out test set: one sample per problem at temperature
1.0 (top-p 1, top-k 0) with the HF rollout engine, graded by the grader (last ``\\boxed{}``).

Files (``data/``): ``{train,test}_{math,code,mixed}.{parquet,jsonl}`` in the prepared row format,
every row with its ``domain``; the mixed files interleave the two domains. The manifest is
``toy_multitask.json`` (not ``toy.json``), so neither world's loader mistakes the other's
directory for its own; it is written last, after a build in a temporary directory.
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcopd.errors import DataError
from tcopd.progress import Event, Progress
from tcopd.runtime.data.io import atomic_write_text, tcopd_cache_dir, write_json
from tcopd.runtime.toy import problems as P
from tcopd.runtime.toy.build import (
    DOMAINS,
    ProblemPool,
    build_or_reuse,
    measure_table,
    read_manifest,
    save_models,
    tokenizer_texts,
    torch_threads,
    toy_prompt,
    toy_row,
    write_rows,
)
from tcopd.runtime.toy.shipped import install_shipped, shipped_for
from tcopd.runtime.toy.tokenizer import build_tokenizer

BUILD_VERSION = 1
BUILD_THREADS = 1  # torch intra-op threads of the build (see _build)
MANIFEST = "toy_multitask.json"
SHIPPED_NAME = "toy-multitask"  # tcopd/runtime/toy/shipped/<name>
MODEL_NAMES = ("student", "math_teacher", "code_teacher")
TEACHER_OF = {"math": "math_teacher", "code": "code_teacher"}  # each domain's expert
SPLITS = ("train", "test")
FILE_KEYS = (*DOMAINS, "mixed")


@dataclass(frozen=True)
class MultitaskSettings:
    """Sizes and training schedule of one multi-task world size."""

    model: str  # model size (tcopd.runtime.toy.training.MODEL_SIZES) and the size's name
    train_rows: int  # exported training prompts per domain (for OPD runs)
    test_rows: int  # held-out problems per domain (the table)
    student_examples: int  # supervised examples per domain of the student
    own_examples: int  # a teacher's examples of its own domain (correct, concise)
    other_examples: int  # a teacher's examples of the other domain (verbose, wrong)
    student_steps: int
    teacher_steps: int  # per teacher
    batch_size: int
    lr: float  # student (from scratch)
    teacher_lr: float  # teachers (fine-tuned from the student)
    guess_fraction: float = 0.4  # student targets (either domain) that are bare guesses
    poor_guess_fraction: float = 0.8  # a teacher's verbose other-domain targets ending in a guess
    max_new_tokens: int = 96


SETTINGS = {
    # The student sees each example about once (as the single-task student, for the same reason:
    # memorised random behaviour per question is what distillation would have to overturn).
    "full": MultitaskSettings("full", 2000, 200, 24000, 12800, 6400, 1500, 600, 32, 5e-3, 2.5e-3),
    "small": MultitaskSettings(
        "small", 32, 12, 100, 100, 50, 12, 6, 16, 5e-3, 2.5e-3, max_new_tokens=48
    ),
}


@dataclass(frozen=True)
class ToyMultitaskWorld:
    """Paths of a built multi-task toy world (every model directory also holds the tokenizer).

    ``train_files`` / ``test_files`` are keyed ``"math"``, ``"code"`` and ``"mixed"``.
    """

    root: Path
    seed: int
    size: str
    student: Path
    math_teacher: Path
    code_teacher: Path
    tokenizer: Path
    train_files: dict[str, Path]
    test_files: dict[str, Path]
    table_json: Path
    table_md: Path
    build_seconds: float = 0.0

    @property
    def models(self) -> dict[str, Path]:
        return {"student": self.student, **self.teachers_by_name}

    @property
    def teachers_by_name(self) -> dict[str, Path]:
        return {"math_teacher": self.math_teacher, "code_teacher": self.code_teacher}

    @property
    def teachers(self) -> dict[str, Path]:
        """The expert teacher of each domain: ``{"math": ..., "code": ...}``."""
        return {"math": self.math_teacher, "code": self.code_teacher}

    def table(self) -> dict[str, Any]:
        return json.loads(self.table_json.read_text())


def default_root() -> Path:
    """``$TCOPD_TOY_MULTITASK_DIR``, else ``$XDG_CACHE_HOME/tcopd/toy-multitask``, else
    ``~/.cache/tcopd/toy-multitask``."""
    if os.environ.get("TCOPD_TOY_MULTITASK_DIR"):
        return Path(os.environ["TCOPD_TOY_MULTITASK_DIR"]).expanduser()
    return tcopd_cache_dir() / "toy-multitask"


def _world(root: Path, manifest: dict[str, Any]) -> ToyMultitaskWorld:
    data = root / "data"
    return ToyMultitaskWorld(
        root=root,
        seed=int(manifest["seed"]),
        size=str(manifest["size"]),
        student=root / "student",
        math_teacher=root / "math_teacher",
        code_teacher=root / "code_teacher",
        tokenizer=root / "student",
        train_files={k: data / f"train_{k}.parquet" for k in FILE_KEYS},
        test_files={k: data / f"test_{k}.parquet" for k in FILE_KEYS},
        table_json=root / "table.json",
        table_md=root / "table.md",
        build_seconds=float(manifest.get("build_seconds", 0.0)),
    )


def read_multitask_manifest(root: str | Path) -> dict[str, Any] | None:
    return read_manifest(Path(root), MANIFEST)


def ensure_toy_multitask(
    root: str | Path | None = None,
    seed: int = 0,
    force: bool = False,
    size: str = "full",
    progress: Progress | None = None,
    settings: MultitaskSettings | None = None,
    source: Path | None = None,
    rebuild: bool = False,
) -> ToyMultitaskWorld:
    """The multi-task toy world under ``root`` (default :func:`default_root`), built if absent or
    different. A world whose manifest has the same seed, size and build version is reused unless
    ``force``. ``settings`` overrides the size's schedule (for design experiments; it is recorded
    in the manifest and takes part in the reuse check).

    The shipped world (seed 0, full size, default settings) is installed from the package with
    verified digests (:mod:`tcopd.runtime.toy.shipped`); anything else is built from the recipe.
    ``rebuild=True`` builds the recipe even there (default root: :func:`default_root` +
    ``-rebuild``). ``source`` points at another shipped copy (tests).
    """
    if size not in SETTINGS:
        raise DataError(
            f"unknown multi-task toy world size {size!r}; use one of {', '.join(SETTINGS)}"
        )
    s = settings or SETTINGS[size]
    if root is None:
        root = default_root()
        if rebuild:
            root = root.with_name(root.name + "-rebuild")
    root = Path(root).expanduser()
    ship = (
        None
        if settings is not None or rebuild
        else shipped_for(SHIPPED_NAME, seed, size, BUILD_VERSION, source)
    )
    wanted = {
        "seed": seed,
        "size": size,
        "version": BUILD_VERSION,
        "settings": s.__dict__,
        "origin": "shipped" if ship else "built",
    }
    if ship:
        build = lambda out: _install(out, seed, s, source)  # noqa: E731
    else:
        build = lambda out: _build(out, seed, size, s, progress)  # noqa: E731
    manifest = build_or_reuse(
        root, wanted, build, force=force, manifest_name=MANIFEST, what="multi-task toy world"
    )
    return _world(root, manifest)


def open_toy_multitask(root: str | Path) -> ToyMultitaskWorld | None:
    """The multi-task world already under ``root`` as it is (any origin), else None."""
    manifest = read_multitask_manifest(Path(root).expanduser())
    return _world(Path(root).expanduser(), manifest) if manifest else None


def _install(out: Path, seed: int, s: MultitaskSettings, source: Path | None) -> dict[str, Any]:
    rows = make_corpora(seed, s, sft=False)["rows"]
    manifest = install_shipped(out, SHIPPED_NAME, lambda o: write_data(o, rows), source=source)
    write_json(out / MANIFEST, manifest)
    return manifest


# ---------------------------------------------------------------------------------- the data


def make_corpora(seed: int, s: MultitaskSettings, sft: bool = True) -> dict[str, Any]:
    """All data of one world: exported rows per (split, domain) and (``sft``) SFT pairs per model.

    Test problems are drawn first and are unique; training prompts avoid them; SFT problems avoid
    both (so no table question was ever a training target). ``sft=False``: the same rows only.
    """
    rng = random.Random(seed)
    gen = ProblemPool(rng)
    test = {d: gen.draw(d, s.test_rows, unique=True) for d in DOMAINS}
    train = {d: gen.draw(d, s.train_rows, unique=True) for d in DOMAINS}
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for split, probs in (("train", train), ("test", test)):
        for d in DOMAINS:
            rows[(split, d)] = [toy_row(p, split, i) for i, p in enumerate(probs[d])]
        rows[(split, "mixed")] = interleave([rows[(split, d)] for d in DOMAINS])
    if not sft:
        return {"rows": rows, "sft": {}}

    def pairs(domain: str, n: int, style) -> list[tuple[str, str]]:
        return [(toy_prompt(p.question), " " + style(p)) for p in gen.draw(domain, n, False)]

    def student(p: P.Problem) -> str:
        if rng.random() < s.guess_fraction:
            return P.guess(p, rng)
        if p.domain == "math":
            return P.concise(p, P.random_ops(p, rng))
        return P.random_print(p, rng)

    def poor(p: P.Problem) -> str:
        # Verbose and wrong, mostly a restatement and a plan that end in a guess (wrong *random*
        # operations alone would be right by chance as often as the student).
        if rng.random() < s.poor_guess_fraction:
            return P.verbose_guess(p, rng)
        return P.verbose(p, P.wrong_ops(p, rng))

    n = s.student_examples
    corpora = {
        "student": pairs("code", n, student) + pairs("math", n, student),
        "math_teacher": pairs("math", s.own_examples, P.concise)
        + pairs("code", s.other_examples, poor),
        "code_teacher": pairs("code", s.own_examples, P.concise)
        + pairs("math", s.other_examples, poor),
    }
    return {"rows": rows, "sft": corpora}


def write_data(out: Path, rows: dict[tuple[str, str], list[dict[str, Any]]]) -> None:
    for (split, key), split_rows in rows.items():
        write_rows(out / "data" / f"{split}_{key}", split_rows)


def interleave(lists: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """``[a0, b0, a1, b1, ...]``, then whatever remains of the longer lists."""
    out = []
    for i in range(max(map(len, lists), default=0)):
        out += [rows[i] for rows in lists if i < len(rows)]
    return out


# ------------------------------------------------------------------------------------- build


def _build(
    out: Path, seed: int, size: str, s: MultitaskSettings, progress: Progress | None
) -> dict[str, Any]:
    import torch

    t0 = time.time()
    times: dict[str, float] = {}
    if progress is not None:
        progress(Event("data", 0, 1))
    data = make_corpora(seed, s)
    write_data(out, data["rows"])
    if progress is not None:
        progress(Event("data", 1, 1))
    tok = build_tokenizer(tokenizer_texts(data))

    # One torch thread: on a busy 2-core box two spinning OpenMP threads ran a step ~13x slower
    # (1.7 s vs 0.13 s, docs/prepare.md), and a fixed count keeps the weights reproducible.
    with torch_threads(BUILD_THREADS):
        threads = torch.get_num_threads()
        models = _train_models(data["sft"], tok, s, seed, progress, times)
        save_models(models, tok, out)
        train_s = time.time() - t0
        t = time.time()
        table = measure_multitask_table(models, tok, data["rows"], s, seed, progress)
        times["table"] = round(time.time() - t, 1)
    table["build_seconds"] = round(time.time() - t0, 1)
    table["train_seconds"] = round(train_s, 1)
    table["phase_seconds"] = times
    write_json(out / "table.json", table)
    atomic_write_text(out / "table.md", table_markdown(table))
    manifest = {
        "seed": seed,
        "size": size,
        "version": BUILD_VERSION,
        "origin": "built",
        "build_seconds": table["build_seconds"],
        "torch_threads": threads,
        "settings": s.__dict__,
    }
    write_json(out / MANIFEST, manifest)
    return manifest


def _train_models(
    sft: dict[str, list[tuple[str, str]]],
    tok,
    s: MultitaskSettings,
    seed: int,
    progress: Progress | None,
    times: dict[str, float],
) -> dict[str, Any]:
    """The student from scratch (seed + 1), then the math and the code teacher fine-tuned from
    copies of it (seeds + 2, + 3); each model's training seconds into ``times``."""
    from tcopd.runtime.toy.training import encode, new_model, train_sft

    def train(model, name: str, steps: int, lr: float, seed_offset: int) -> None:
        t = time.time()
        pairs = sft[name]
        train_sft(
            model,
            encode(tok, [a for a, _ in pairs], [b for _, b in pairs]),
            steps=steps,
            batch_size=s.batch_size,
            lr=lr,
            seed=seed + seed_offset,
            pad_id=tok.pad_token_id,
            progress=progress,
            label=name,
        )
        times[name] = round(time.time() - t, 1)

    student = new_model(tok, s.model, seed)
    train(student, "student", s.student_steps, s.lr, 1)
    models = {"student": student}
    for k, name in enumerate(("math_teacher", "code_teacher")):
        models[name] = copy.deepcopy(student)
        train(models[name], name, s.teacher_steps, s.teacher_lr, 2 + k)
    return models


# ------------------------------------------------------------------------------------- table


def measure_multitask_table(
    models: dict[str, Any],
    tokenizer,
    rows: dict[tuple[str, str], list[dict[str, Any]]],
    s: MultitaskSettings,
    seed: int,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Per domain, each model's accuracy (± SE) and mean length on that domain's test rows.

    ``{"domains": {"math": <measure_table result>, "code": ...}, "checks": {...}}``; the checks
    are the shape the world promises, in accuracy points: each teacher's margin over the student
    on its own domain, and on the other domain.
    """

    def renamed(domain: str) -> Progress | None:
        if progress is None:
            return None
        return lambda e: progress(Event(f"table {domain}", e.done, e.total))

    domains = {
        d: measure_table(models, tokenizer, rows[("test", d)], s, seed, renamed(d)) for d in DOMAINS
    }
    return {"domains": domains, "checks": shape_checks(domains)}


def shape_checks(domains: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``<teacher>_own_minus_student_points`` (≥ 40 promised) and
    ``<teacher>_other_minus_student_points`` (< 10 promised) for each domain's teacher."""
    checks = {}
    for d, teacher in TEACHER_OF.items():
        other = next(o for o in DOMAINS if o != d)
        for label, dom in (("own", d), ("other", other)):
            m = domains[dom]["models"]
            checks[f"{teacher}_{label}_minus_student_points"] = 100 * (
                m[teacher]["accuracy"] - m["student"]["accuracy"]
            )
    return checks


def model_cells(table: dict[str, Any], name: str) -> list[str]:
    """One model's row of the table: accuracy and mean length (± SE) per domain."""
    cells = []
    for d in DOMAINS:
        r = table["domains"][d]["models"][name]
        cells += [
            f"{100 * r['accuracy']:.1f} ± {100 * r['accuracy_se']:.1f}",
            f"{r['mean_length']:.1f} ± {r['mean_length_se']:.1f}",
        ]
    return cells


def table_markdown(table: dict[str, Any]) -> str:
    doms = table["domains"]
    first = doms[DOMAINS[0]]
    sizes = ", ".join(f"{doms[d]['problems']} {d}" for d in DOMAINS)
    lines = [
        f"Multi-task toy world, held-out test sets ({sizes} problems), one sample each at "
        f"temperature {first['temperature']:g} (top-p 1, top-k 0), max {first['max_new_tokens']} "
        f"new tokens, seed {first['seed']}; ± is the standard error.",
        "",
        "| model | math accuracy (%) | math mean length | code accuracy (%) | code mean length |",
        "|---|---|---|---|---|",
    ]
    for name in first["models"]:
        lines.append(f"| {name} | " + " | ".join(model_cells(table, name)) + " |")
    if "build_seconds" in table:
        lines += ["", f"Build time: {table['build_seconds']:.0f} s."]
    return "\n".join(lines) + "\n"

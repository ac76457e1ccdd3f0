"""Build (or reuse) the toy world: data, tokenizer, three trained models, and its table.

World v3 (docs/prepare.md has the design, fixed before any claim was measured, and the table):

- *student*: trained from scratch on concise, correct **code** solutions plus **math** that has a
  *habit* and a *fault*. The habit: 1–3 hedging sentences before the work ("Hmm, let me think.
  Wait, let me check."), which make it longer than the expert and say nothing. The fault: concise
  working whose operation per step follows the verb only 65 % of the time. Every equation it sees
  is arithmetically right, so it can add and subtract; it reads the verb, but carelessly. A
  teacher's token signal fixes the fault at the operation token and the habit at each hedge.
- *expert*: the student further trained on correct, concise math after 0 or 1 hedge (its lengths
  vary: length is something the student can learn, not a fixed format).
- *anti-expert*: the student further trained on **verbose** code ("restate every quantity, then
  plan") and on math that shares the student's habit and exaggerates it (2–4 hedges, then a
  restatement and a plan) and is mostly wrong — long and wrong on math, the paper's code teacher.

The table is measured on the held-out math test set: one sample per problem at temperature 1.0
(top-p 1, top-k 0) with the HF rollout engine, graded by the grader (last ``\\boxed{}``).

The world a user gets is the *shipped* one (:mod:`tcopd.runtime.toy.shipped`): the weights,
tokenizer and table built once here, installed with verified digests; the data is regenerated from
the seed (byte-identical everywhere, checked against the same digests). ``build`` is the recipe,
kept runnable (``tcopd prepare toy --rebuild``) so that it stays checkable.

Everything is built in a temporary directory next to the root and renamed into place, so an
interrupted build never leaves a world that looks complete. ``toy.json`` (the manifest, written
last) records seed and size: a root whose manifest matches is reused.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcopd.errors import DataError
from tcopd.progress import Event, Progress
from tcopd.runtime.data.io import (
    atomic_write_text,
    tcopd_cache_dir,
    write_json,
    write_jsonl,
    write_parquet,
)
from tcopd.runtime.data.prompts import render_prompt
from tcopd.runtime.data.rows import make_row
from tcopd.runtime.toy import problems as P
from tcopd.runtime.toy.shipped import install_shipped, shipped_for
from tcopd.runtime.toy.tokenizer import build_tokenizer

BUILD_VERSION = 3  # 2: no chat template on the toy tokenizer; 3: the hedging habit (world v3)
BUILD_THREADS = 1  # torch intra-op threads of the build: never stalled by a busy box, same weights
DOMAINS = ("math", "code")
MODEL_NAMES = ("student", "expert", "anti_expert")
# Toy prompts carry no instruction sentence: every toy model answers in \boxed{} anyway, and the
# G-OPD sentence would make each training sequence ~25 % longer (CPU time is the budget here).
TOY_INSTRUCTION = ""


@dataclass(frozen=True)
class BuildSettings:
    """Sizes and training schedule of one toy world size."""

    model: str
    train_rows: int  # exported training prompts per domain (for OPD runs)
    test_rows: int  # held-out problems per domain (the table uses the math ones)
    student_examples: int  # supervised examples per domain (enough that none repeats much)
    expert_examples: int  # supervised (math) examples of the expert
    anti_examples: int  # supervised examples per domain of the anti-expert
    student_steps: int
    expert_steps: int
    anti_steps: int
    batch_size: int
    lr: float  # student (from scratch)
    teacher_lr: float  # expert and anti-expert (fine-tuned from the student)
    guess_fraction: float = 0.0  # student math targets that are bare guesses (v2: 0.4)
    student_op_accuracy: float = 0.65  # P(right operation) per step in student targets (v2: 0.5)
    anti_guess_fraction: float = 0.8  # anti-expert verbose math targets that end in a guess
    student_hedges: tuple[int, ...] = (1, 2, 3)  # hedges before a student math answer (uniform)
    expert_hedges: tuple[int, ...] = (0, 1)
    anti_hedges: tuple[int, ...] = (2, 3, 4)
    max_new_tokens: int = 96


SETTINGS = {
    # Each student example is seen about once: a student that memorised its random operations
    # would be confidently wrong per question, and distillation would have to overturn that.
    "full": BuildSettings("full", 2000, 200, 24000, 19200, 4800, 1500, 600, 300, 32, 5e-3, 2.5e-3),
    "small": BuildSettings(
        "small", 64, 16, 100, 100, 100, 12, 6, 6, 16, 5e-3, 2.5e-3, max_new_tokens=48
    ),
}


@dataclass(frozen=True)
class ToyWorld:
    """Paths of a built toy world (every model directory also holds the tokenizer)."""

    root: Path
    seed: int
    size: str
    student: Path
    expert: Path
    anti_expert: Path
    tokenizer: Path
    train_file: Path
    test_file: Path
    train_files: dict[str, Path] = field(default_factory=dict)
    test_files: dict[str, Path] = field(default_factory=dict)
    table_json: Path | None = None
    table_md: Path | None = None
    build_seconds: float = 0.0

    @property
    def models(self) -> dict[str, Path]:
        return {"student": self.student, "expert": self.expert, "anti_expert": self.anti_expert}

    def table(self) -> dict[str, Any]:
        return json.loads(Path(self.table_json).read_text()) if self.table_json else {}


def default_root() -> Path:
    """``$TCOPD_TOY_DIR``, else ``$XDG_CACHE_HOME/tcopd/toy``, else ``~/.cache/tcopd/toy``."""
    if os.environ.get("TCOPD_TOY_DIR"):
        return Path(os.environ["TCOPD_TOY_DIR"]).expanduser()
    return tcopd_cache_dir() / "toy"


def _world(root: Path, manifest: dict[str, Any]) -> ToyWorld:
    return ToyWorld(
        root=root,
        seed=int(manifest["seed"]),
        size=str(manifest["size"]),
        student=root / "student",
        expert=root / "expert",
        anti_expert=root / "anti_expert",
        tokenizer=root / "student",
        train_file=root / "data" / "train.parquet",
        test_file=root / "data" / "test.parquet",
        train_files={d: root / "data" / f"train_{d}.parquet" for d in DOMAINS},
        test_files={d: root / "data" / f"test_{d}.parquet" for d in DOMAINS},
        table_json=root / "table.json",
        table_md=root / "table.md",
        build_seconds=float(manifest.get("build_seconds", 0.0)),
    )


def read_manifest(root: Path, name: str = "toy.json") -> dict[str, Any] | None:
    path = Path(root) / name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def ensure_toy(
    root: str | Path | None = None,
    seed: int = 0,
    force: bool = False,
    size: str = "full",
    progress: Progress | None = None,
    rebuild: bool = False,
    source: Path | None = None,
) -> ToyWorld:
    """The toy world under ``root`` (default :func:`default_root`), installed or built if absent
    or different.

    The shipped world (seed 0, full size) is *installed* from the package with verified digests
    (seconds); any other seed or size, or ``rebuild=True``, is *built* from the recipe (minutes;
    a rebuild's default root is :func:`default_root` + ``-rebuild``, so it never replaces the
    shipped world). A world whose manifest has the same seed, size, build version and origin is
    reused unless ``force``. ``source`` points at another shipped copy (tests).
    """
    if size not in SETTINGS:
        raise DataError(f"unknown toy world size {size!r}; use one of {', '.join(SETTINGS)}")
    if root is None:
        root = default_root()
        if rebuild:
            root = root.with_name(root.name + "-rebuild")
    root = Path(root).expanduser()
    s = SETTINGS[size]
    ship = None if rebuild else shipped_for("toy", seed, size, BUILD_VERSION, source)
    wanted = {
        "seed": seed,
        "size": size,
        "version": BUILD_VERSION,
        "origin": "shipped" if ship else "built",
    }
    if ship:
        manifest = build_or_reuse(
            root, wanted, lambda out: _install(out, seed, s, source), force=force
        )
    else:
        manifest = build_or_reuse(
            root, wanted, lambda out: _build(out, seed, s, progress), force=force
        )
    return _world(root, manifest)


def open_toy(root: str | Path) -> ToyWorld | None:
    """The world already under ``root`` as it is (any seed, size, version or origin), else None."""
    manifest = read_manifest(Path(root).expanduser())
    return _world(Path(root).expanduser(), manifest) if manifest else None


def _install(out: Path, seed: int, s: BuildSettings, source: Path | None) -> dict[str, Any]:
    rows = make_corpora(seed, s, sft=False)["rows"]
    manifest = install_shipped(out, "toy", lambda o: write_data(o, rows), source=source)
    write_json(out / "toy.json", manifest)
    return manifest


def build_or_reuse(
    root: Path,
    wanted: dict[str, Any],
    build: Callable[[Path], dict[str, Any]],
    *,
    force: bool = False,
    manifest_name: str = "toy.json",
    what: str = "toy world",
) -> dict[str, Any]:
    """The manifest of the world under ``root``: reused if it has every ``wanted`` value (and not
    ``force``), else ``build(tmp)`` fills a temporary directory next to ``root`` (writing the
    manifest last) and it is renamed into place. A non-empty directory with no manifest is refused.
    """
    manifest = read_manifest(root, manifest_name)
    if manifest and not force and all(manifest.get(k) == v for k, v in wanted.items()):
        return manifest
    root.parent.mkdir(parents=True, exist_ok=True)
    # Two commands started at once on a fresh machine (or two test workers) must not both build
    # and swap the world under each other's feet: one builds, the other waits and reuses it.
    with _exclusive(root):
        manifest = read_manifest(root, manifest_name)
        if manifest and not force and all(manifest.get(k) == v for k, v in wanted.items()):
            return manifest
        return _build_in_place(root, build, manifest is None, what)


@contextlib.contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    """An exclusive ``flock`` for ``root`` during the block, released if the process dies. The
    lock file lives in the temporary directory (named after the resolved path), so a failed build
    leaves nothing next to ``root``."""
    import fcntl
    import hashlib

    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"tcopd-world-{key}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build_in_place(
    root: Path, build: Callable[[Path], dict[str, Any]], no_manifest: bool, what: str
) -> dict[str, Any]:
    """``build(tmp)`` in a temporary directory next to ``root``, then renamed into place."""
    if root.exists() and not root.is_dir():
        raise DataError(
            f"{what} path {str(root)!r} exists and is not a directory; pick another --out"
        )
    if root.is_dir() and any(root.iterdir()) and no_manifest:
        raise DataError(
            f"{str(root)!r} is a non-empty directory that is not a {what}; pick another --out "
            "(or empty it)"
        )
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.build-", dir=root.parent))
    try:
        manifest = build(tmp)
        if root.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            os.replace(root, old / "world")
            os.replace(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


# ---------------------------------------------------------------------------------- the data


def toy_prompt(question: str) -> str:
    return render_prompt(
        [{"role": "user", "content": question + TOY_INSTRUCTION}], template="plain"
    )


def toy_row(p: P.Problem, split: str, index: int) -> dict[str, Any]:
    return make_row(
        p.question,
        str(p.answer),
        data_source=f"toy-{p.domain}",
        domain=p.domain,
        split=split,
        index=index,
        instruction=TOY_INSTRUCTION,
        extra={"solution": P.concise(p), "steps": len(p.steps)},
    )


class ProblemPool:
    """Unique problems: the test set first, then everything else avoids its questions."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.seen: set[str] = set()

    def draw(self, domain: str, n: int, unique: bool) -> list[P.Problem]:
        out: list[P.Problem] = []
        while len(out) < n:
            p = P.make_problem(domain, self.rng)
            if p.question in self.seen:
                continue
            if unique:
                self.seen.add(p.question)
            out.append(p)
        return out


def make_corpora(seed: int, s: BuildSettings, sft: bool = True) -> dict[str, Any]:
    """All data of one world: exported rows per split/domain and (``sft``) SFT pairs per model.

    The rows are drawn first, so ``sft=False`` gives the same rows without the SFT corpora.
    """
    rng = random.Random(seed)
    gen = ProblemPool(rng)
    test = {d: gen.draw(d, s.test_rows, unique=True) for d in DOMAINS}
    train = {d: gen.draw(d, s.train_rows, unique=True) for d in DOMAINS}
    rows = {
        (split, d): [toy_row(p, split, i) for i, p in enumerate(probs[d])]
        for split, probs in (("train", train), ("test", test))
        for d in DOMAINS
    }
    if not sft:
        return {"rows": rows, "sft": {}}

    def pairs(
        problems: list[P.Problem], style: Callable[[P.Problem], str]
    ) -> list[tuple[str, str]]:
        return [(toy_prompt(p.question), " " + style(p)) for p in problems]

    def student_math(p: P.Problem) -> str:
        if rng.random() < s.guess_fraction:
            body = P.guess(p, rng)
        else:
            body = P.concise(p, P.careless_ops(p, rng, s.student_op_accuracy))
        return P.hedged(body, rng, s.student_hedges)

    def expert_math(p: P.Problem) -> str:
        return P.hedged(P.concise(p), rng, s.expert_hedges)

    def anti_math(p: P.Problem) -> str:
        # Verbose and wrong: mostly a restatement and a plan that end in a guess, otherwise
        # verbose working with wrong operations. (Wrong *but random* operations alone would
        # leave the anti-expert right by chance as often as the student.)
        if rng.random() < s.anti_guess_fraction:
            body = P.verbose_guess(p, rng)
        else:
            body = P.verbose(p, P.wrong_ops(p, rng))
        return P.hedged(body, rng, s.anti_hedges)

    n, na = s.student_examples, s.anti_examples
    corpora = {
        "student": pairs(gen.draw("code", n, False), P.concise)
        + pairs(gen.draw("math", n, False), student_math),
        "expert": pairs(gen.draw("math", s.expert_examples, False), expert_math),
        "anti_expert": pairs(gen.draw("code", na, False), P.verbose)
        + pairs(gen.draw("math", na, False), anti_math),
    }
    return {"rows": rows, "sft": corpora}


def write_rows(path_stem: Path, rows: list[dict[str, Any]]) -> None:
    write_parquet(path_stem.with_suffix(".parquet"), rows)
    write_jsonl(path_stem.with_suffix(".jsonl"), rows)


def write_data(out: Path, rows: dict[tuple[str, str], list[dict[str, Any]]]) -> None:
    """``out/data/{split}_{domain}`` and the interleaved ``out/data/{split}`` (parquet + JSONL)."""
    for split in ("train", "test"):
        for d in DOMAINS:
            write_rows(out / "data" / f"{split}_{d}", rows[(split, d)])
        mixed = [
            r for pair in zip(*(rows[(split, d)] for d in DOMAINS), strict=False) for r in pair
        ]
        write_rows(out / "data" / split, mixed)


# ------------------------------------------------------------------------------------- build


def _build(out: Path, seed: int, s: BuildSettings, progress: Progress | None) -> dict[str, Any]:
    """The recipe: data → tokenizer → student, expert, anti-expert → table → manifest (last)."""
    import torch

    t0 = time.time()
    if progress is not None:
        progress(Event("data", 0, 1))
    data = make_corpora(seed, s)
    write_data(out, data["rows"])
    if progress is not None:
        progress(Event("data", 1, 1))

    tok = build_tokenizer(tokenizer_texts(data))
    with torch_threads(BUILD_THREADS):
        threads = torch.get_num_threads()
        models = _train_models(data["sft"], tok, s, seed, progress)
        save_models(models, tok, out)
        build_train_s = time.time() - t0
        table = measure_table(models, tok, data["rows"][("test", "math")], s, seed, progress)
    table["build_seconds"] = round(time.time() - t0, 1)
    table["train_seconds"] = round(build_train_s, 1)
    write_json(out / "table.json", table)
    atomic_write_text(out / "table.md", table_markdown(table))
    manifest = {
        "seed": seed,
        "size": s.model,
        "version": BUILD_VERSION,
        "origin": "built",
        "build_seconds": table["build_seconds"],
        "torch_threads": threads,
        "settings": s.__dict__,
    }
    write_json(out / "toy.json", manifest)
    return manifest


def tokenizer_texts(data: dict[str, Any]) -> list[str]:
    """The texts the toy tokenizer's vocabulary is built from: every SFT prompt and response of
    :func:`make_corpora`'s ``data``, then every exported row's prompt."""
    texts = [t for pairs in data["sft"].values() for pair in pairs for t in pair]
    texts += [toy_prompt(r["prompt"][0]["content"]) for rows in data["rows"].values() for r in rows]
    return texts


@dataclass(frozen=True)
class SftSchedule:
    """One model's ``train_sft`` schedule in the recipe."""

    steps: int
    lr: float
    seed: int  # the batch order's seed


def sft_schedules(s: BuildSettings, seed: int) -> dict[str, SftSchedule]:
    """The student's schedule (seed + 1), then the expert's and the anti-expert's (+ 2, + 3)."""
    return {
        "student": SftSchedule(s.student_steps, s.lr, seed + 1),
        "expert": SftSchedule(s.expert_steps, s.teacher_lr, seed + 2),
        "anti_expert": SftSchedule(s.anti_steps, s.teacher_lr, seed + 3),
    }


def train_toy_model(
    model,
    name: str,
    sft: dict[str, list[tuple[str, str]]],
    tok,
    s: BuildSettings,
    seed: int,
    progress: Progress | None = None,
    stop_after: int | None = None,
) -> list[float]:
    """Train ``model`` in place as the recipe trains model ``name`` on its SFT pairs; returns the
    loss of every step. ``stop_after`` stops after that many steps of the same schedule (the
    recipe test's prefixes)."""
    from tcopd.runtime.toy.training import encode, train_sft

    pairs = sft[name]
    schedule = sft_schedules(s, seed)[name]
    return train_sft(
        model,
        encode(tok, [a for a, _ in pairs], [b for _, b in pairs]),
        steps=schedule.steps,
        batch_size=s.batch_size,
        lr=schedule.lr,
        seed=schedule.seed,
        pad_id=tok.pad_token_id,
        progress=progress,
        label=name,
        stop_after=stop_after,
    )


def _train_models(
    sft: dict[str, list[tuple[str, str]]],
    tok,
    s: BuildSettings,
    seed: int,
    progress: Progress | None,
) -> dict[str, Any]:
    """The student from scratch, then the expert and the anti-expert fine-tuned from copies of it
    (schedules: :func:`sft_schedules`)."""
    from tcopd.runtime.toy.training import new_model

    student = new_model(tok, s.model, seed)
    train_toy_model(student, "student", sft, tok, s, seed, progress)
    models = {"student": student}
    for name in ("expert", "anti_expert"):
        models[name] = copy.deepcopy(student)
        train_toy_model(models[name], name, sft, tok, s, seed, progress)
    return models


def save_models(models: dict[str, Any], tok, out: Path) -> None:
    from tcopd.runtime.models.loading import quiet_hf_progress

    with quiet_hf_progress():  # no "Writing model shards" bars inside our own progress
        for name, m in models.items():
            m.save_pretrained(out / name)
            tok.save_pretrained(out / name)


class torch_threads:
    """Run the build with at most ``most`` intra-op threads (default 2: the design target is two
    CPU cores)."""

    def __init__(self, most: int = 2):
        self.most = most

    def __enter__(self):
        import torch

        self.before = torch.get_num_threads()
        torch.set_num_threads(min(self.most, self.before))

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.before)


# ------------------------------------------------------------------------------------- table


def measure_table(
    models: dict[str, Any],
    tokenizer,
    rows: list[dict[str, Any]],
    s: BuildSettings,
    seed: int,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Accuracy and mean response length of each model on ``rows`` (one sample at T = 1.0)."""
    from tcopd.runtime.evaluation.grading import Grader
    from tcopd.runtime.generation.rollout import HFEngine, SamplingParams

    prompts = [render_prompt(r["prompt"], template="plain") for r in rows]
    golds = [r["reward_model"]["ground_truth"] for r in rows]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    sampling = SamplingParams(
        n=1, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=s.max_new_tokens, seed=seed
    )
    out: dict[str, Any] = {
        "problems": len(rows),
        "temperature": 1.0,
        "max_new_tokens": s.max_new_tokens,
        "seed": seed,
        "models": {},
    }
    with Grader(workers=1, timeout_s=10.0) as grader:
        for k, (name, model) in enumerate(models.items()):
            if progress:
                progress(Event("table", k, len(models)))
            engine = HFEngine(model, tokenizer, device="cpu", token_budget=16384)
            completions = engine.generate(prompt_ids, sampling)
            verdicts = grader.grade(golds, [c.text for c in completions])
            correct = [v is True for v in verdicts]
            lengths = [c.num_tokens for c in completions]
            n = len(correct)
            acc = sum(correct) / n
            out["models"][name] = {
                "accuracy": acc,
                "accuracy_se": math.sqrt(acc * (1 - acc) / n),
                "mean_length": statistics.fmean(lengths),
                "mean_length_se": statistics.stdev(lengths) / math.sqrt(n) if n > 1 else 0.0,
                "ungraded": sum(v is None for v in verdicts),
                "truncated": sum(c.finish_reason == "length" for c in completions),
                "example": completions[0].text,
            }
        if progress:
            progress(Event("table", len(models), len(models)))
    m = out["models"]
    if {"student", "expert", "anti_expert"} <= set(m):
        out["checks"] = {
            "expert_minus_student_points": 100
            * (m["expert"]["accuracy"] - m["student"]["accuracy"]),
            "anti_minus_student_points": 100
            * (m["anti_expert"]["accuracy"] - m["student"]["accuracy"]),
            "anti_over_expert_length": m["anti_expert"]["mean_length"]
            / max(1e-9, m["expert"]["mean_length"]),
        }
    return out


def table_markdown(table: dict[str, Any]) -> str:
    lines = [
        f"Toy math test set: {table['problems']} problems, one sample each at temperature "
        f"{table['temperature']:g} (top-p 1, top-k 0), max {table['max_new_tokens']} new tokens, seed {table['seed']}.",
        "",
        "| model | accuracy (%) | mean length (tokens) |",
        "|---|---|---|",
    ]
    for name, r in table["models"].items():
        lines.append(
            f"| {name} | {100 * r['accuracy']:.1f} ± {100 * r['accuracy_se']:.1f} | "
            f"{r['mean_length']:.1f} ± {r['mean_length_se']:.1f} |"
        )
    if "build_seconds" in table:
        lines += ["", f"Build time: {table['build_seconds']:.0f} s."]
    return "\n".join(lines) + "\n"

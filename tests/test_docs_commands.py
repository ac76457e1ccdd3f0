"""The docs' commands run as written (issue 33): every ``tcopd …`` line in README.md and docs/*.md
parses with the real CLI (unknown flags, missing arguments, bad choices fail), ``tcopd train``
lines also build their config (a missing ``--out`` fails); and every flag of every ``--help``
is explained somewhere in the docs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# Lines that cannot be checked here, each with the reason.
EXCEPTIONS: dict[str, str] = {}


def _cli():
    import typer

    from tcopd.cli.main import _register, app

    _register()
    return typer.main.get_command(app)


def doc_commands() -> list[tuple[str, int, str, list[str]]]:
    """``(file, line, kind, argv after "tcopd")`` of every tcopd command in the docs.

    ``kind`` is ``run`` for a command line as a user would type it (a code block, no
    placeholders): it must parse, and a ``train`` line must also build its config; ``names``
    for a synopsis (``[--steps N]``, ``PATH``, ``$ARGS``) or a span in prose: the command and
    every flag it names must exist."""
    found = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        fenced, i = False, 0
        while i < len(lines):
            line, start = lines[i], i + 1
            if line.lstrip().startswith("```"):
                fenced = not fenced
                i += 1
                continue
            if (fenced or line.startswith("    ")) and line.strip().startswith("#"):
                i += 1  # a comment
                continue
            if fenced or line.startswith("    "):
                while line.rstrip().endswith("\\") and i + 1 < len(lines):  # continued lines
                    i += 1
                    line = line.rstrip()[:-1] + " " + lines[i].strip()
                candidates = [(line, True)]
            else:
                candidates = [(c, False) for c in re.findall(r"`([^`]*\btcopd [a-z][^`]*)`", line)]
            for text, block in candidates:
                argv = _argv(text)
                if argv is None:
                    continue
                synopsis = any(_placeholder(w) for w in argv) or any(
                    mark in text for mark in ("[", "|", "...", "…")
                )
                found.append((path.name, start, "run" if block and not synopsis else "names", argv))
            i += 1
    return found


def _placeholder(word: str) -> bool:
    value = word.split("=", 1)[-1]
    return "$" in value or "<" in value or bool(re.fullmatch(r"[A-Z][A-Z0-9_.]*", value))


def _argv(line: str) -> list[str] | None:
    """The arguments after ``tcopd`` (or ``-m tcopd`` / ``--module tcopd``) on a shell line."""
    line = line.split(" #")[0].strip()
    m = re.search(r"(?:^|[\s/$])(?:tcopd|-m tcopd|--module tcopd)\s+([a-z][\w-]*.*)$", line)
    if not m:
        return None
    try:
        words = shlex.split(m.group(1).replace("[", " ").replace("]", " "))
    except ValueError:
        return None
    cut = [k for k, w in enumerate(words) if w in ("|", "&&", ";", ">", "2>&1", "&", "||")]
    words = words[: cut[0]] if cut else words
    return [w for w in words if w not in ("...", "…")] or None


COMMANDS = doc_commands()


def test_the_docs_have_commands_to_check():
    runs = [a for _, _, kind, a in COMMANDS if kind == "run"]
    assert len(runs) > 30
    assert {a[0] for a in runs} >= {"train", "eval", "prepare", "sweep", "demo", "analyze"}
    assert {a[0] for _, _, _, a in COMMANDS} >= {"score", "serve-teacher"}


def _command(argv: list[str], key: str):
    words, cmd = list(argv), _cli()
    while hasattr(cmd, "commands"):
        if not words:
            return cmd, words
        name = words.pop(0)
        for alternative in name.split("|"):  # a synopsis: "analyze length|phrases"
            assert alternative in cmd.commands, f"{key}: no command {alternative!r}"
        if "|" in name:
            return cmd, words
        cmd = cmd.commands[name]
    return cmd, words


@pytest.mark.parametrize(
    "where, line, kind, argv", COMMANDS, ids=[f"{f}:{n}" for f, n, _, _ in COMMANDS]
)
def test_every_documented_command_parses(where, line, kind, argv):
    key = f"{where}:{line}"
    if key in EXCEPTIONS:
        pytest.skip(EXCEPTIONS[key])
    cmd, words = _command(argv, key)
    known = {o for p in cmd.params for o in [*p.opts, *getattr(p, "secondary_opts", [])]}
    named = [n for w in words if w.startswith("--") for n in w.split("=")[0].split("|")]
    passes_on = cmd.context_settings.get("ignore_unknown_options")  # serve-teacher → vLLM
    unknown = [] if passes_on else [w for w in named if w not in known | {"--help"}]
    assert not unknown, f"{key}: tcopd {' '.join(argv)}: no such option {unknown}"
    if kind != "run" or "--help" in words or hasattr(cmd, "commands"):
        return
    try:
        ctx = cmd.make_context(argv[0], list(words), resilient_parsing=False)
    except Exception as e:  # click's usage errors: missing argument or value, bad choice, type
        pytest.fail(f"{key}: tcopd {' '.join(argv)}\n  {type(e).__name__}: {e}")
    given = {k for k, v in ctx.params.items() if v}
    if argv[0] == "train" and not {"config", "resume"} & given:
        from tcopd.errors import TcopdError
        from tcopd.pipelines.train.config import load_train_config

        flags = {k: v for k, v in ctx.params.items() if k not in ("config", "resume", "overwrite")}
        flags = {k: (None if v == [] else v) for k, v in flags.items()}
        try:
            load_train_config(None, flags)
        except TcopdError as e:
            pytest.fail(f"{key}: tcopd {' '.join(argv)}\n  {e}")


def test_the_settings_tables_are_generated_from_the_code():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "docs_tables", REPO / "scripts" / "docs_tables.py"
    )
    docs_tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(docs_tables)
    stale = docs_tables.update(check=True)
    assert not stale, f"run scripts/docs_tables.py: out of date: {stale}"


def _help_flags() -> list[tuple[str, str]]:
    out = []

    def walk(c, prefix):
        if hasattr(c, "commands"):
            for n, sub in c.commands.items():
                walk(sub, [*prefix, n])
            return
        for p in c.params:
            for o in [*p.opts, *getattr(p, "secondary_opts", [])]:
                if o.startswith("--") and not o.startswith("--no-") and o != "--help":
                    out.append((" ".join(prefix), o))

    walk(_cli(), [])
    return out


def test_every_flag_is_explained_in_the_docs():
    text = "\n".join(p.read_text() for p in DOCS)
    missing = [
        f"tcopd {c} {o}" for c, o in _help_flags() if not re.search(re.escape(o) + r"\b", text)
    ]
    assert not missing, "flags no doc mentions:\n" + "\n".join(missing)


def test_no_citation_leaves_the_project():
    # the project cites its own docs (docs/algorithm.md is the objective's reference), never a
    # file the repository does not hold
    texts = [*DOCS, *sorted((REPO / "tcopd").rglob("*.py"))]
    cited = [f"{p.relative_to(REPO)}" for p in texts if re.search(r"\bSPEC §", p.read_text())]
    assert not cited, cited


def test_shared_options_keep_their_own_panel():
    # the sweep groups its --help into panels; --config's option object is shared by every
    # command and must not be moved into the sweep's "Sweep" panel everywhere
    cli = _cli()
    for name in ("train", "eval", "score", "prepare"):
        config = next(p for p in cli.commands[name].params if "--config" in p.opts)
        assert getattr(config, "rich_help_panel", None) is None, name

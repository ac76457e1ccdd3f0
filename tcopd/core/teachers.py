"""Teacher specifications: who the teachers are and with which λ (docs/algorithm.md).

Three ways to name teachers, combinable:

- ``--expert PATH`` (name ``expert``) and ``--anti-expert PATH`` (name ``anti_expert``), their
  λ from ``--lambdas`` in that order (``--lambdas 1.5,-0.5``);
- ``--teacher NAME=PATH:LAMBDA`` (repeatable); ``--teacher NAME=PATH`` takes its λ from
  ``--lambdas`` too, after the expert / anti-expert;
- a per-domain λ table (multi-task): ``{domain: {teacher_name: λ}}``; a teacher missing from a
  row has λ = 0 for that domain, a domain missing from the table uses the teachers' own λ.

A teacher whose λ is 0 everywhere is never loaded or scored (it cannot change the reward).

A teacher's PATH may instead be the URL of a vLLM server (placement ``server``, docs/serving.md):
``--teacher code=http://host:8001:-0.5``. A URL must name its port; the colon after the port
(or after the URL's path) starts λ, so ``code=http://host:8001`` takes its λ from ``--lambdas``.
Several servers of one teacher: ``code=http://a:8001,http://b:8001:-0.5``. In YAML, also a
``served_teachers`` list of ``{name, url, lam}`` (``url`` a string or a list of strings).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tcopd.errors import ConfigError

RESERVED_NAMES = ("student", "reference", "old", "rollout")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


_URL_RE = re.compile(r"https?://(?:\[[^\]/]*\]|[^:/,\[\]\s]+):\d+(?:/[^:,\s]*)?", re.I)


@dataclass(frozen=True)
class TeacherSpec:
    """One teacher: a unique name, a model path or Hub id, and its coefficient λ.

    ``urls``: the base URLs of the vLLM servers that score it (empty: a local model); ``path``
    then holds them comma-joined, for display.
    """

    name: str
    path: str
    lam: float
    urls: tuple[str, ...] = ()

    @property
    def served(self) -> bool:
        """True when the teacher is scored by vLLM servers (placement ``server``)."""
        return bool(self.urls)


def is_url(text: str) -> bool:
    """Whether a teacher's PATH is a server URL (``http://`` or ``https://``)."""
    return text.strip().lower().startswith(("http://", "https://"))


def parse_urls(text: str, what: str = "teacher URL") -> tuple[tuple[str, ...], float | None]:
    """``"http://a:8001,http://b:8001:-0.5"`` → ``(("http://a:8001", "http://b:8001"), -0.5)``.

    Each URL must name its port; a ``:LAMBDA`` after the last URL's port (or path) is λ. A
    trailing ``/`` or ``/v1`` is dropped: the client needs the server's root (``/tokenize``).
    """
    urls: list[str] = []
    pos, lam = 0, None
    text = text.strip()
    while True:
        m = _URL_RE.match(text, pos)
        if m is None:
            raise ConfigError(
                f"{what} {text!r} must be http://HOST:PORT[/PATH] (the port is required), "
                "several joined by ',' and an optional ':LAMBDA' at the end"
            )
        url = m.group().rstrip("/")
        urls.append(url[: -len("/v1")] if url.endswith("/v1") else url)
        pos = m.end()
        if pos == len(text):
            break
        if text[pos] == ",":
            pos += 1
            continue
        if text[pos] != ":":
            raise ConfigError(f"{what} {text!r}: unexpected {text[pos:]!r} after {m.group()!r}")
        lam = parse_lambda(text[pos + 1 :], f"λ in {what} {text!r}")
        break
    return tuple(urls), lam


def parse_lambda(text: str, what: str = "λ") -> float:
    """One λ from text; rejects non-numbers, NaN and inf with a message naming the value."""
    try:
        value = float(text.strip())
    except ValueError:
        raise ConfigError(f"{what} {text.strip()!r} is not a number (example: --lambdas 1.5,-0.5)")
    if not math.isfinite(value):
        raise ConfigError(f"{what} {text.strip()!r} must be a finite number")
    return value


def parse_lambdas(text: str) -> list[float]:
    """``"1.5,-0.5"`` → ``[1.5, -0.5]``."""
    parts = [p for p in text.split(",")]
    if not text.strip() or any(not p.strip() for p in parts):
        raise ConfigError(
            f"--lambdas {text!r} must be a comma-separated list of numbers, e.g. 1.5,-0.5"
        )
    return [parse_lambda(p, "λ") for p in parts]


def parse_teacher_arg(text: str) -> tuple[str, str, float | None]:
    """``NAME=PATH:LAMBDA`` or ``NAME=PATH`` → (name, path, λ or None).

    The λ is what follows the *last* colon, unless that contains a path separator (so a path
    with a colon still works when λ is omitted). A PATH that is a server URL is parsed by
    :func:`parse_urls` (its port's colon is not a λ) and returned without the λ.
    """
    if "=" not in text:
        raise ConfigError(
            f"--teacher {text!r} must look like NAME=PATH:LAMBDA (e.g. math=/models/math:1.5)"
        )
    name, rest = text.split("=", 1)
    name, rest = name.strip(), rest.strip()
    lam: float | None = None
    if is_url(rest) and name:
        urls, lam = parse_urls(rest, f"URL of teacher {name!r}")
        return name, ",".join(urls), lam
    if ":" in rest:
        head, tail = rest.rsplit(":", 1)
        if "/" not in tail and "\\" not in tail:  # what follows the last colon is a λ, not a path
            lam = parse_lambda(tail, f"λ of teacher {name!r}")
            rest = head
    if not name or not rest:
        raise ConfigError(
            f"--teacher {text!r} must look like NAME=PATH:LAMBDA (empty name or path)"
        )
    return name, rest, lam


def build_teacher_specs(
    expert: str | None = None,
    anti_expert: str | None = None,
    lambdas: Sequence[float] | str | None = None,
    teachers: Sequence[str] = (),
    served: Sequence[Mapping[str, Any]] = (),
    table_given: bool = False,
) -> list[TeacherSpec]:
    """Combine the short flags, ``--teacher`` arguments and YAML ``served_teachers`` entries
    (:func:`parse_served_entry`) into validated specs, in that order.

    λ defaults: ``--expert`` alone without ``--lambdas`` is OPD (λ = 1). Every other teacher
    needs its λ, from ``--lambdas`` or from ``:LAMBDA`` (``lam:`` in YAML) — except with a
    per-domain λ table (``table_given``): teachers without a λ then have none outside the
    table (0), and a domain without a row is refused when the data is read
    (:func:`check_domains`). ``--expert`` and
    ``--anti-expert`` may be server URLs too (a ``:LAMBDA`` on them counts as their λ).
    """
    if isinstance(lambdas, str):
        lambdas = parse_lambdas(lambdas)
    pending: list[tuple[str, str, float | None]] = []
    for name, value in (("expert", expert), ("anti_expert", anti_expert)):
        if value and is_url(value):
            urls, lam = parse_urls(value, f"URL of {name}")
            pending.append((name, ",".join(urls), lam))
        elif value:
            pending.append((name, value, None))
    pending.extend(parse_teacher_arg(t) for t in teachers)
    pending.extend(parse_served_entry(e, i) for i, e in enumerate(served))
    if not pending:
        raise ConfigError(
            "no teacher given: pass --expert PATH (and --anti-expert PATH) or --teacher NAME=PATH:LAMBDA"
        )
    needing = [p for p in pending if p[2] is None]
    if lambdas is None:
        if table_given:
            lambdas = [0.0] * len(needing)
        elif len(needing) == 1 and needing[0][0] == "expert" and len(pending) == 1:
            lambdas = [1.0]
        elif needing:
            names = ", ".join(p[0] for p in needing)
            raise ConfigError(
                f"no λ for teacher(s) {names}: pass --lambdas with {len(needing)} value(s)"
            )
        else:
            lambdas = []
    lambdas = list(lambdas)
    if len(lambdas) != len(needing):
        names = ", ".join(p[0] for p in needing) or "none"
        raise ConfigError(
            f"--lambdas has {len(lambdas)} value(s) ({','.join(f'{v:g}' for v in lambdas)}) "
            f"but {len(needing)} teacher(s) take their λ from it ({names})"
        )
    it = iter(lambdas)
    specs = [
        TeacherSpec(n, p, lam if lam is not None else next(it), _urls_of(p))
        for n, p, lam in pending
    ]
    validate_specs(specs, table_given)
    return specs


def _urls_of(path: str) -> tuple[str, ...]:
    return parse_urls(path)[0] if is_url(path) else ()


def parse_served_entry(entry: Any, index: int = 0) -> tuple[str, str, float | None]:
    """One YAML ``served_teachers`` entry ``{name, url, lam}`` → (name, comma-joined URLs, λ).

    ``url`` is one URL or a list of URLs (several servers of the same model); ``lam`` may be
    left out, then λ comes from ``--lambdas`` like a λ-less ``--teacher``.
    """
    where = f"served_teachers[{index}]"
    if not isinstance(entry, Mapping) or "name" not in entry or "url" not in entry:
        raise ConfigError(f"{where} must be a mapping with 'name', 'url' and 'lam', got {entry!r}")
    unknown = sorted(set(entry) - {"name", "url", "lam"})
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (keys: name, url, lam)")
    raw = entry["url"]
    parts = [raw] if isinstance(raw, str) else raw
    if (
        not isinstance(parts, (list, tuple))
        or not parts
        or not all(isinstance(u, str) for u in parts)
    ):
        raise ConfigError(f"{where}: 'url' must be a URL or a list of URLs, got {raw!r}")
    urls: list[str] = []
    for u in parts:
        found, lam_in_url = parse_urls(u, f"{where} url")
        if lam_in_url is not None:
            raise ConfigError(f"{where}: put λ in 'lam', not after the URL {u!r}")
        urls.extend(found)
    lam = entry.get("lam")
    if lam is not None:
        lam = parse_lambda(str(lam), f"{where} lam")
    return str(entry["name"]), ",".join(urls), lam


def validate_specs(specs: Sequence[TeacherSpec], table_given: bool = False) -> None:
    """Unique, well-formed, non-reserved names; finite λ; at least one λ ≠ 0 (without a table:
    with one, its rows give the λ)."""
    seen: set[str] = set()
    for s in specs:
        if not _NAME_RE.match(s.name):
            raise ConfigError(
                f"teacher name {s.name!r} must start with a letter and use letters, digits, _ . -"
            )
        if s.name in RESERVED_NAMES:
            raise ConfigError(
                f"teacher name {s.name!r} is reserved ({', '.join(RESERVED_NAMES)}): choose another"
            )
        if s.name in seen:
            raise ConfigError(f"duplicate teacher name {s.name!r}: each teacher needs its own name")
        seen.add(s.name)
        if not math.isfinite(s.lam):
            raise ConfigError(f"λ of teacher {s.name!r} must be finite, got {s.lam}")
    if specs and all(s.lam == 0 for s in specs) and not table_given:
        raise ConfigError(
            "all λ are zero: at least one teacher needs a non-zero λ (else there is no reward)"
        )


def validate_lambda_table(
    table: Mapping[str, Mapping[str, float]], specs: Sequence[TeacherSpec]
) -> dict[str, dict[str, float]]:
    """Check a per-domain table ``{domain: {teacher: λ}}`` against the teachers; fill zeros."""
    names = [s.name for s in specs]
    out: dict[str, dict[str, float]] = {}
    for domain, row in table.items():
        if not isinstance(row, Mapping):
            raise ConfigError(f"lambda_table[{domain!r}] must map teacher names to λ, got {row!r}")
        for teacher, lam in row.items():
            if teacher not in names:
                raise ConfigError(
                    f"lambda_table[{domain!r}] names teacher {teacher!r}, which is not configured "
                    f"(teachers: {', '.join(names)})"
                )
            if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
                raise ConfigError(
                    f"lambda_table[{domain!r}][{teacher!r}] must be a finite number, got {lam!r}"
                )
        full = {n: float(row.get(n, 0.0)) for n in names}
        if all(v == 0 for v in full.values()):
            raise ConfigError(f"lambda_table[{domain!r}]: all λ are zero for this domain")
        out[str(domain)] = full
    return out


def check_domains(
    domains: Sequence[str | None],
    table: Mapping[str, Mapping[str, float]],
    specs: Sequence[TeacherSpec],
    source: str,
) -> None:
    """Every domain in the data has a λ: a table row, or the teachers' own λ (not all zero)."""
    if any(s.lam != 0 for s in specs):
        return
    missing: dict[str, int] = {}
    for d in domains:
        if d is None or d not in table:
            missing[str(d)] = missing.get(str(d), 0) + 1
    if missing:
        d, n = next(iter(missing.items()))
        raise ConfigError(
            f"domain {d!r}: {n} prompt(s) of {source} carry it, but lambda_table has no row for "
            f"it and the teachers have no λ of their own (add a row, or give --lambdas)"
        )


def active_teachers(
    specs: Sequence[TeacherSpec], table: Mapping[str, Mapping[str, float]] | None = None
) -> list[TeacherSpec]:
    """Teachers with a non-zero λ somewhere (default λ or any domain row): the ones to load."""
    table = table or {}
    return [
        s for s in specs if s.lam != 0 or any(row.get(s.name, 0.0) != 0 for row in table.values())
    ]


def lambda_matrix(
    specs: Sequence[TeacherSpec],
    domains: Sequence[str | None],
    table: Mapping[str, Mapping[str, float]] | None = None,
) -> torch.Tensor:
    """``lam_BK``: the λ row of each response's domain (table row, else the specs' λ)."""
    table = table or {}
    default = [s.lam for s in specs]
    rows = [
        [table[d][s.name] for s in specs] if d is not None and d in table else default
        for d in domains
    ]
    return torch.tensor(rows, dtype=torch.float32).reshape(len(domains), len(specs))

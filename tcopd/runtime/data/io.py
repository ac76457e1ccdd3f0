"""Run-directory I/O: atomic writes, JSONL with line numbers, parquet.

Every output is written to a temporary file in the same directory and renamed over the target,
so an interrupted run never leaves a truncated file that looks complete.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tcopd.errors import DataError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def tcopd_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/tcopd``, else ``~/.cache/tcopd``: the toy worlds, imported models, wheels."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "tcopd"


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(
        path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    )


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dumps_row(row: Mapping[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, default=_json_default)


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for row in rows:
            f.write(dumps_row(row) + "\n")
    return Path(path)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, row)``; a malformed line is a DataError naming file and line."""
    p = Path(path)
    with open(p) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{lineno}: malformed JSON ({e.msg}); fix or delete that line")
            if not isinstance(row, dict):
                raise DataError(
                    f"{p}:{lineno}: each line must be a JSON object, got {type(row).__name__}"
                )
            yield lineno, row


def read_rows(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """Rows of a ``.jsonl``/``.json``/``.parquet``/``.csv`` file as ``(row_number, row)`` (1-based)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"input file {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".json"):
        if suffix == ".json":
            try:
                data = json.loads(p.read_text())
            except json.JSONDecodeError as e:
                raise DataError(f"{p}: malformed JSON ({e.msg} at line {e.lineno})")
            if isinstance(data, list):
                return [(i, r) for i, r in enumerate(data, 1)]
        return list(iter_jsonl(p))
    if suffix == ".parquet":
        try:
            table = pq.read_table(p)
        except Exception as e:  # pyarrow raises several types for a bad file
            raise DataError(f"{p}: not a readable parquet file ({e})")
        return [(i, r) for i, r in enumerate(table.to_pylist(), 1)]
    if suffix == ".csv":
        with open(p, newline="") as f:
            return [(i, dict(r)) for i, r in enumerate(csv.DictReader(f), 1)]
    raise DataError(f"{p}: unsupported file type {suffix!r}; use .jsonl, .json, .parquet or .csv")


def write_parquet(path: str | Path, rows: list[Mapping[str, Any]]) -> Path:
    table = pa.Table.from_pylist([dict(r) for r in rows])
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def write_rows(path: str | Path, rows: list[Mapping[str, Any]]) -> Path:
    """Write by suffix: ``.parquet`` or JSONL (anything else)."""
    if Path(path).suffix.lower() == ".parquet":
        return write_parquet(path, rows)
    return write_jsonl(path, rows)


class JsonlAppender:
    """Append rows to a JSONL file, flushed and fsynced per row (for resumable runs).

    A torn last line from a kill is dropped by :func:`read_jsonl_tolerant` on resume.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a")

    def write(self, row: Mapping[str, Any]) -> None:
        self._f.write(dumps_row(row) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_jsonl_tolerant(path: str | Path) -> list[dict[str, Any]]:
    """Read an append-only JSONL file, dropping (and truncating away) a torn final line."""
    p = Path(path)
    if not p.exists():
        return []
    rows: list[dict[str, Any]] = []
    good_bytes = 0
    with open(p, "rb") as f:
        for raw in f:
            try:
                rows.append(json.loads(raw))
            except (json.JSONDecodeError, UnicodeDecodeError):
                break
            good_bytes += len(raw)
    if good_bytes != p.stat().st_size:
        with open(p, "r+b") as f:
            f.truncate(good_bytes)
    return rows

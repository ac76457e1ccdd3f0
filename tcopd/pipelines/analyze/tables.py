"""The table every ``tcopd analyze`` subcommand produces, and its text / CSV / JSON forms.

A :class:`Table` has one row per statistic and one column per run (Tables 2 and 3 of the paper
have that shape). Values are plain Python numbers, strings or ``None`` (not defined, e.g. the mean
length of correct answers when none is correct); each row carries a format spec used only for
display, so CSV and JSON keep full precision and parse back to the same numbers.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tcopd.errors import ConfigError
from tcopd.runtime.data.io import atomic_write_text

Format = Literal["table", "csv", "json"]
FORMATS: tuple[str, ...] = ("table", "csv", "json")
MISSING_TEXT = "—"


@dataclass(frozen=True)
class Row:
    """One statistic across runs: ``values[i]`` belongs to ``Table.columns[i]``."""

    label: str
    values: tuple[Any, ...]
    fmt: str = ".3f"  # format spec for display only ("d", ".1f", ".3f", "s", ...)


@dataclass(frozen=True)
class Table:
    title: str
    columns: tuple[str, ...]
    rows: tuple[Row, ...] = field(default_factory=tuple)
    row_header: str = "statistic"
    notes: tuple[str, ...] = ()  # short lines printed under the table (definitions, caveats)

    def value(self, label: str, column: str) -> Any:
        """The value of row ``label`` in ``column`` (for tests and callers that compose tables)."""
        j = self.columns.index(column)
        for row in self.rows:
            if row.label == label:
                return row.values[j]
        raise KeyError(label)

    def records(self) -> list[dict[str, Any]]:
        """``[{row_header: label, column: value, ...}, ...]``, the JSON/CSV row shape."""
        return [
            {self.row_header: r.label, **dict(zip(self.columns, r.values, strict=True))}
            for r in self.rows
        ]


def format_value(value: Any, fmt: str) -> str:
    """Display form of one cell; ``None`` and NaN show as an em dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING_TEXT
    if isinstance(value, str):
        return value
    try:
        return format(value, fmt)
    except (ValueError, TypeError):
        return str(value)


def to_text(table: Table) -> str:
    """A plain, aligned text table (what ``--format table --output FILE`` writes)."""
    header = [table.row_header, *table.columns]
    body = [[r.label, *(format_value(v, r.fmt) for v in r.values)] for r in table.rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    out = [table.title, line(header), "  ".join("-" * w for w in widths)]
    out += [line(cells) for cells in body]
    out += list(table.notes)
    return "\n".join(out) + "\n"


def to_csv(table: Table) -> str:
    """CSV with a header row; ``None`` is an empty cell; floats at full precision (``repr``)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([table.row_header, *table.columns])
    for r in table.rows:
        writer.writerow([r.label, *("" if v is None else v for v in r.values)])
    return buf.getvalue()


def to_json(table: Table) -> str:
    """``{"title", "row_header", "columns", "rows": [records], "notes"}``; ``None`` is ``null``."""
    obj = {
        "title": table.title,
        "row_header": table.row_header,
        "columns": list(table.columns),
        "rows": table.records(),
        "notes": list(table.notes),
    }
    return json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def render(table: Table, fmt: str) -> str:
    if fmt == "csv":
        return to_csv(table)
    if fmt == "json":
        return to_json(table)
    if fmt == "table":
        return to_text(table)
    raise ConfigError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def resolve_format(fmt: str | None, output: str | Path | None) -> str:
    """``--format`` if given, else inferred from ``--output``'s suffix (.csv/.json), else ``table``."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ConfigError(f"unknown --format {fmt!r}; use one of {', '.join(FORMATS)}")
        return fmt
    suffix = Path(output).suffix.lower() if output else ""
    return {".csv": "csv", ".json": "json"}.get(suffix, "table")


def write_table(table: Table, path: str | Path, fmt: str) -> Path:
    """Write ``table`` to ``path`` in ``fmt``, atomically."""
    return atomic_write_text(path, render(table, fmt))


def unique_names(paths: Sequence[Path], names: Sequence[str] | None, kind: str) -> list[str]:
    """Column names: the explicit ``names`` (one per path), else each run's directory name.

    ``kind`` is ``"file"`` (the name is the parent directory's) or ``"dir"`` (the directory's own
    name). Colliding names get the next path component prepended, then a ``#i`` suffix.
    """
    if names:
        if len(names) != len(paths):
            raise ConfigError(
                f"got {len(names)} --name for {len(paths)} inputs; give one --name per input or none"
            )
        if len(set(names)) != len(names):
            raise ConfigError(f"--name values must differ, got {list(names)}")
        return list(names)
    run_dirs = [(p.resolve().parent if kind == "file" else p.resolve()) for p in paths]
    out = [d.name or str(d) for d in run_dirs]
    if len(set(out)) != len(out):
        # runs/a/eval/samples.jsonl, runs/b/eval/samples.jsonl → "a/eval", "b/eval";
        # two files of one directory x → "x/<file stem>"
        one_dir = len(set(run_dirs)) != len(run_dirs)
        out = [
            o
            if out.count(o) == 1
            else (f"{d.name}/{p.stem}" if one_dir else f"{d.parent.name}/{d.name}")
            for o, d, p in zip(out, run_dirs, paths, strict=True)
        ]
    seen: dict[str, int] = {}
    final = []
    for o in out:
        seen[o] = seen.get(o, 0) + 1
        final.append(o if seen[o] == 1 and out.count(o) == 1 else f"{o}#{seen[o]}")
    return final

"""Progress reports of long jobs: one event type for train, eval, score, prepare and the toy build.

Pipelines and runtime functions take ``progress: Progress | None`` and call it with an
:class:`Event`; only the CLI renders events (rich bars). An event says what is happening
(``phase``), how far along (``done`` of ``total`` units, when countable), which training
``step`` (0-based) and, once a step has finished, its ``metrics`` row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    phase: str  # what is happening: "rollout", "scoring", "graded", "table", ...
    done: int | None = None  # units finished so far
    total: int | None = None  # units in all (None: not known)
    step: int | None = None  # training step, 0-based
    detail: str = ""  # e.g. which model or run
    metrics: Mapping[str, Any] | None = None  # a finished step's metrics row


Progress = Callable[[Event], None]


def report(progress: Progress | None, phase: str, **fields: Any) -> None:
    """``progress(Event(phase, **fields))`` when there is someone to tell."""
    if progress is not None:
        progress(Event(phase, **fields))

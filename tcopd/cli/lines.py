"""Progress as plain lines, for output that is not a terminal (piped to a file, ``tee``, CI logs).

A rich bar redraws one line in place and shows nothing at all when the output is piped; a user who
runs ``make demo | tee demo.log`` should still see what tcopd is doing. :class:`LineReporter`
prints one line when a phase starts, one per tenth of a counted phase, and one per few training
steps, each with the elapsed time.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console

from tcopd.progress import Event


class LineReporter:
    """An Event callback that prints throttled plain lines to ``console``."""

    def __init__(self, console: Console, prefix: str = "tcopd", every_steps: int = 5):
        self.console, self.prefix, self.every_steps = console, prefix, every_steps
        self.t0 = time.monotonic()
        self.key: tuple[str, str] | None = None
        self.tenths: dict[str, int] = {}  # counted phase → the last tenth printed

    def __call__(self, event: Event) -> None:
        if event.step is not None and event.metrics is not None:
            if (event.step + 1) % self.every_steps == 0 or event.step == 0:
                who = f"{event.detail} · " if event.detail else ""
                self._line(f"{who}step {event.step + 1}{_summary(event.metrics)}")
        elif _counted(event):
            # keyed on the phase alone: a detail such as "695 tok/s" changes with every event
            tenth = (10 * event.done) // max(1, event.total)
            if tenth < self.tenths.get(event.phase, -1):
                self.tenths[event.phase] = -1  # the phase starts again (next model, next run)
            if tenth != self.tenths.get(event.phase, -1) and (tenth % 5 == 0 or event.total >= 20):
                self.tenths[event.phase] = tenth
                self._line(f"{_label(event)} {event.done}/{event.total}")
        elif event.step is None and (event.phase, event.detail) != self.key:
            self.key = (event.phase, event.detail)
            self._line(_label(event))

    def _line(self, text: str) -> None:
        elapsed = time.monotonic() - self.t0
        self.console.print(
            f"[{self.prefix} {elapsed:6.0f} s] {text}", highlight=False, markup=False
        )


def _counted(event: Event) -> bool:
    return event.done is not None and event.total is not None


def _label(event: Event) -> str:
    return " · ".join(p for p in (event.detail, event.phase) if p)


def _summary(metrics: Any) -> str:
    """A few headline numbers of a finished step, when present."""
    keys = (("rollout_accuracy", "acc"), ("response_len_mean", "len"), ("eval_mean_at_n", "eval"))
    parts = [
        f"{short} {metrics[k]:.3g}" for k, short in keys if isinstance(metrics.get(k), (int, float))
    ]
    return (": " + ", ".join(parts)) if parts else ""

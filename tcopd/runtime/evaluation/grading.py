"""Answer extraction and grading with math-verify in worker processes.

Rule (G-OPD's, docs/eval.md): take the last balanced ``\\boxed{...}`` of the response (none: wrong)
and check ``verify(parse("\\boxed{" + gold + "}"), parse("\\boxed{" + pred + "}"))`` — gold
first, the call is asymmetric. A plain ``parse`` of the whole response would credit unboxed
numbers in truncated outputs.

A data file may name another answer format in its rows (``reward_model.answer_format``,
:data:`ANSWER_FORMATS`): ``last_number`` takes the response's last number instead of its last box
(for tasks whose models answer in words, e.g. the ``arith`` tasks of ``tcopd prepare``); the
check is the same.

Why processes: math-verify's own timeouts use ``signal.alarm``, which only works on a main
thread and cannot interrupt a sympy computation that is stuck in C. So each worker is a separate
process, math-verify's internal timeouts are switched off, and the *parent* enforces one
wall-clock limit per sample: a worker that runs past it (or dies) is killed and replaced, and its
sample is counted as ungraded (``None``) — never a hung run.

Workers start lazily (a response without a box, or two plain integers, never needs one) from a
``forkserver`` that has math-verify preloaded, so a new worker costs a fork, not an import.
This is the only module that imports ``math_verify``.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import multiprocessing.connection
import re
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tcopd.runtime.data.rows import ANSWER_FORMATS

VerifyFn = Callable[[str, str], bool]

_INT_RE = re.compile(r"^[+-]?\d+$")
# A number as people write it: optional sign, digits with optional thousands commas, optional
# decimals. "1,234.5" → 1234.5; the sign only when it is not a binary minus ("9-4" → 4).
_NUMBER_RE = re.compile(r"(?<![\w.])(-?)(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?![\d,]*\d)")


# ----------------------------------------------------------------------------------- extraction


def _last_boxed_span(text: str) -> str | None:
    """The last ``\\boxed{...}`` (else the last ``\\fbox{...}``) with its braces, or None.

    Mirrors verl's ``last_boxed_only_string`` (used by G-OPD): the *last* occurrence counts; if
    its braces never close (a truncated response) the answer is None, we do not fall back to an
    earlier box. ``\\boxed 5`` (space form) is accepted up to the next ``$``.
    """
    idx = text.rfind("\\boxed")
    if "\\boxed " in text and text.rfind("\\boxed ") == idx:
        return "\\boxed " + text[idx + len("\\boxed ") :].split("$")[0]
    if idx < 0:
        idx = text.rfind("\\fbox")
        if idx < 0:
            return None
    depth = 0
    for i in range(idx, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[idx : i + 1]
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last balanced ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``; None if none.

    ``"... \\boxed{\\frac{1}{2}}"`` → ``"\\frac{1}{2}"``; ``"\\boxed{12"`` (truncated) → None.
    """
    span = _last_boxed_span(text)
    if span is None:
        return None
    if span.startswith("\\boxed "):
        return span[len("\\boxed ") :].strip()
    head = "\\boxed{" if span.startswith("\\boxed") else "\\fbox{"
    if not span.startswith(head):  # e.g. "\\boxed\\n{...}" — text between the macro and the brace
        return span[span.index("{") + 1 : -1]
    return span[len(head) : -1]


def extract_last_number(text: str) -> str | None:
    """The last number written in ``text``, commas dropped; None if it has none.

    ``"3 + 4 = 7."`` → ``"7"``; ``"about 1,200 people"`` → ``"1200"``; ``"-3"`` → ``"-3"``;
    ``"9-4"`` → ``"4"`` (a minus after a digit is subtraction). A ``\\boxed{...}`` is not
    special: its number counts like any other.
    """
    last = None
    for m in _NUMBER_RE.finditer(text):
        sign = m.group(1)
        if sign and m.start() > 0 and text[m.start() - 1].isdigit():
            sign = ""
        last = sign + m.group(2).replace(",", "") + (m.group(3) or "")
    return last


def extract_answer(text: str, answer_format: str = "boxed") -> str | None:
    """The answer of ``text`` under ``answer_format`` (:data:`ANSWER_FORMATS`)."""
    if answer_format == "boxed":
        return extract_boxed(text)
    if answer_format == "last_number":
        return extract_last_number(text)
    raise ValueError(f"unknown answer format {answer_format!r} (one of {ANSWER_FORMATS})")


# ------------------------------------------------------------------------------------ verifying


def verify_answer(gold: str, pred: str) -> bool:
    """G-OPD's check, in this process: ``verify(parse(\\boxed{gold}), parse(\\boxed{pred}))``.

    math-verify's internal (SIGALRM) timeouts are off; callers that need a limit use
    :class:`Grader`, which enforces it from the parent.
    """
    from math_verify import parse, verify

    gold_parsed = parse("\\boxed{" + gold + "}", parsing_timeout=None)
    pred_parsed = parse("\\boxed{" + pred + "}", parsing_timeout=None)
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def fast_verdict(gold: str, pred: str | None) -> bool | None:
    """The verdict when it needs no math-verify, else None.

    No extracted answer (or an empty one) is wrong; two plain integers compare by value
    (AIME's ``033`` = ``33``), which is what math-verify concludes for them too.
    """
    if pred is None or not pred.strip():
        return False
    g, p = gold.strip(), pred.strip()
    if _INT_RE.match(g) and _INT_RE.match(p):
        return int(g) == int(p)
    return None


def _worker_main(conn: multiprocessing.connection.Connection, verify_fn: VerifyFn | None) -> None:
    """Worker loop: receive ``(task_id, gold, pred)``, reply ``(task_id, verdict, error)``."""
    # math-verify warns on every call that its own timeout is off: the parent enforces the limit.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    fn = verify_fn or verify_answer
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        task_id, gold, pred = msg
        try:
            conn.send((task_id, bool(fn(gold, pred)), None))
        except Exception as e:  # a grader error is an ungraded sample, not a dead worker
            conn.send((task_id, None, f"{type(e).__name__}: {e}"))


# ------------------------------------------------------------------------------------ the pool


@dataclass
class GradeStats:
    """Counts over the life of one :class:`Grader`."""

    submitted: int = 0
    fast: int = 0  # decided without a worker (no box, plain integers)
    verified: int = 0  # decided by math-verify in a worker
    timeouts: int = 0  # worker killed past the per-sample limit → ungraded
    crashes: int = 0  # worker died → ungraded
    errors: int = 0  # grader raised → ungraded
    error_messages: list[str] = field(default_factory=list)

    @property
    def ungraded(self) -> int:
        return self.timeouts + self.crashes + self.errors


@dataclass
class _Worker:
    proc: Any
    conn: multiprocessing.connection.Connection
    task: tuple[Hashable, str, str] | None = None
    started: float = 0.0


_PRELOAD_SET = False


def _context(start_method: str) -> Any:
    global _PRELOAD_SET
    ctx = multiprocessing.get_context(start_method)
    if start_method == "forkserver" and not _PRELOAD_SET:
        # The forkserver imports these once; every worker forked from it starts warm.
        ctx.set_forkserver_preload(["tcopd.runtime.evaluation.grading", "math_verify"])
        _PRELOAD_SET = True
    return ctx


class Grader:
    """A pool of grading worker processes with a per-sample wall-clock limit.

    ``Grader(workers=2, timeout_s=10).grade(golds, responses) -> list[bool | None]`` (None:
    ungraded — the worker timed out, crashed or raised). To overlap grading with generation,
    :meth:`submit` samples as they come (a background thread feeds the workers) and read
    verdicts with :meth:`as_completed` or :meth:`results`. Use as a context manager (or call
    :meth:`close`) so that the workers are stopped.

    ``verify_fn(gold, pred) -> bool`` replaces math-verify (a picklable top-level function; tests
    use it to simulate graders that hang or crash). ``answer_format``: how a response's answer is
    read (:func:`extract_answer`), unless a call names its own.
    """

    def __init__(
        self,
        workers: int = 2,
        timeout_s: float = 10.0,
        *,
        verify_fn: VerifyFn | None = None,
        start_method: str = "forkserver",
        answer_format: str = "boxed",
    ):
        if answer_format not in ANSWER_FORMATS:
            raise ValueError(f"unknown answer format {answer_format!r} (one of {ANSWER_FORMATS})")
        self.answer_format = answer_format
        if workers < 1:
            raise ValueError("workers must be >= 1")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.num_workers = workers
        self.timeout_s = float(timeout_s)
        self.verify_fn = verify_fn
        self.stats = GradeStats()
        self._ctx = _context(start_method)
        self._workers: list[_Worker] = []
        self._queue: collections.deque[tuple[Hashable, str, str]] = collections.deque()
        self._done: collections.deque[tuple[Hashable, bool | None]] = collections.deque()
        self._pending = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._failure: BaseException | None = None

    # -- public API ----------------------------------------------------------------------------

    def submit(
        self,
        key: Hashable,
        gold: str,
        response: str | None = None,
        *,
        pred: str | None = None,
        answer_format: str | None = None,
    ) -> None:
        """Queue one sample. Give the response text (its answer is extracted under
        ``answer_format``, default the grader's) or ``pred``."""
        if self._closed:
            raise RuntimeError("Grader is closed")
        fmt = answer_format or self.answer_format
        answer = pred if response is None else extract_answer(response, fmt)
        verdict = fast_verdict(str(gold), answer)
        with self._cond:
            self.stats.submitted += 1
            self._pending += 1
            if verdict is not None:
                self.stats.fast += 1
                self._done.append((key, verdict))
                self._cond.notify_all()
                return
            self._queue.append((key, str(gold), answer))  # type: ignore[arg-type]
            self._ensure_thread()
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        """Samples submitted whose verdict has not been handed out yet."""
        with self._cond:
            return self._pending

    def as_completed(
        self, block: bool = True, timeout: float | None = None
    ) -> Iterator[tuple[Hashable, bool | None]]:
        """Yield ``(key, verdict)`` as verdicts arrive; ends when nothing is pending.

        ``block=False`` yields only what is ready now (for polling between generation batches).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                while not self._done:
                    if self._failure is not None:
                        raise RuntimeError("grading thread failed") from self._failure
                    if self._pending == 0 or not block:
                        return
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return
                    self._cond.wait(timeout=0.5 if left is None else min(left, 0.5))
                key, verdict = self._done.popleft()
                self._pending -= 1
            yield key, verdict

    def results(self) -> dict[Hashable, bool | None]:
        """Block until every submitted sample has a verdict; return them by key."""
        return dict(self.as_completed())

    def grade(self, golds: Sequence[str], responses: Sequence[str]) -> list[bool | None]:
        """Verdict per response (True/False, None = ungraded), in order."""
        if len(golds) != len(responses):
            raise ValueError(f"{len(golds)} golds but {len(responses)} responses")
        base = object()  # keys private to this call
        for i, (g, r) in enumerate(zip(golds, responses, strict=True)):
            self.submit((base, i), g, r)
        out: list[bool | None] = [None] * len(golds)
        for key, verdict in self.as_completed():
            out[key[1]] = verdict  # type: ignore[index]
        return out

    def grade_answers(self, golds: Sequence[str], preds: Sequence[str | None]) -> list[bool | None]:
        """Like :meth:`grade` for answers already extracted (None: no answer → False)."""
        base = object()
        for i, (g, p) in enumerate(zip(golds, preds, strict=True)):
            self.submit((base, i), g, pred=p)
        out: list[bool | None] = [None] * len(golds)
        for key, verdict in self.as_completed():
            out[key[1]] = verdict  # type: ignore[index]
        return out

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5 + self.timeout_s)
        for w in self._workers:
            self._stop_worker(w, graceful=True)
        self._workers.clear()

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; close() is the contract
        try:
            if not self._closed:
                self.close()
        except Exception:
            pass

    # -- the feeding thread ---------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tcopd-grader", daemon=True)
            self._thread.start()

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_worker_main, args=(child, self.verify_fn), daemon=True)
        proc.start()
        child.close()
        return _Worker(proc=proc, conn=parent)

    def _stop_worker(self, w: _Worker, graceful: bool = False) -> None:
        if graceful and w.task is None and w.proc.is_alive():
            try:
                w.conn.send(None)
                w.proc.join(timeout=1.0)
            except (OSError, BrokenPipeError):
                pass
        if w.proc.is_alive():
            w.proc.kill()
        w.proc.join(timeout=5.0)
        w.conn.close()

    def _finish(self, w: _Worker, verdict: bool | None) -> None:
        assert w.task is not None
        with self._cond:
            self._done.append((w.task[0], verdict))
            self._cond.notify_all()
        w.task = None

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # surface to the consumer instead of hanging it
            with self._cond:
                self._failure = e
                self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                busy = any(w.task is not None for w in self._workers)
                if not self._queue and not busy:
                    self._cond.wait(timeout=0.5)
                    continue
                # Hand queued samples to idle workers, starting workers up to the pool size.
                idle = [w for w in self._workers if w.task is None]
                while self._queue and (idle or len(self._workers) < self.num_workers):
                    if not idle:
                        self._workers.append(self._spawn())
                        idle.append(self._workers[-1])
                    w = idle.pop()
                    w.task = self._queue.popleft()
                    w.started = time.monotonic()
                    try:
                        w.conn.send((0, w.task[1], w.task[2]))  # the key stays in the parent
                    except (OSError, BrokenPipeError):
                        pass  # seen as a crash below
            self._wait_and_reap()

    def _wait_and_reap(self) -> None:
        now = time.monotonic()
        busy = [w for w in self._workers if w.task is not None]
        if not busy:
            return
        next_deadline = min(w.started + self.timeout_s for w in busy)
        wait_s = max(0.0, min(next_deadline - now, 0.05))
        ready = multiprocessing.connection.wait([w.conn for w in busy], timeout=wait_s)
        for w in busy:
            if w.conn in ready:
                try:
                    task_id, verdict, err = w.conn.recv()
                except (EOFError, OSError):
                    self._replace(w, crashed=True)
                    continue
                with self._cond:
                    if err is None:
                        self.stats.verified += 1
                    else:
                        self.stats.errors += 1
                        if len(self.stats.error_messages) < 20:
                            self.stats.error_messages.append(err)
                self._finish(w, verdict)
            elif time.monotonic() - w.started > self.timeout_s:
                self._replace(w, crashed=False)

    def _replace(self, w: _Worker, crashed: bool) -> None:
        """Kill a hung or dead worker, count its sample ungraded, and start a fresh one."""
        with self._cond:
            if crashed:
                self.stats.crashes += 1
            else:
                self.stats.timeouts += 1
        self._finish(w, None)
        self._stop_worker(w)
        idx = self._workers.index(w)
        self._workers[idx] = self._spawn()

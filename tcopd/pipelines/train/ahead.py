"""One step off (``--max-staleness 1``): the next batch is generated while this one is trained.

The schedule of step n (docs/train.md, "One step off"; the estimator in docs/algorithm.md):

1. take batch n: generated during step n−1 with the weights θ_{n−1} (staleness 1), or now with
   θ_n when nothing is ahead (the run's first step: staleness 0);
2. start generating batch n+1 in a background thread, with the weights the engine holds: θ_n,
   the weights batch n is trained from; as soon as it exists, the served teachers start scoring
   it (HTTP, in their own thread);
3. grade, score and update on batch n (θ_n → θ_{n+1}), as in the synchronous loop;
4. wait for batch n+1 (the trainer's idle time), then give the engine θ_{n+1}: the engine gets
   new weights between its generations, never during one, and nothing is dropped.

One engine generates one batch at a time, so a batch is at most one step stale; larger values of
``--max-staleness`` are refused. The HF engine then samples from its own copy of the policy (the
training module changes under it otherwise); vLLM always has its own.

Checkpoints are taken at step boundaries, after step 4: batch n+1 is complete then, and each rank
saves its share in the checkpoint (``ahead-rank<r>.json``), so ``--resume`` trains on the very
batch the uninterrupted run would have: nothing is lost, repeated or regenerated, and the
staleness stays 1. A checkpoint without the file (the run was synchronous) starts with a fresh
batch (staleness 0).

Errors: what the background thread raised is re-raised where the batch is collected, under
``on_every_rank`` (every rank stops together), naming the step whose batch it was. The thread
is a daemon: a run that stops while a generation is in flight waits for it a short while
(``CLOSE_WAIT_S``, so the engine is not closed under it), then exits without it.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch

from tcopd.errors import TcopdError, TrainingError
from tcopd.pipelines.train.rollout import Rollouts
from tcopd.runtime.generation.rollout import Completion
from tcopd.runtime.training.distributed import Reduce, on_every_rank

CLOSE_WAIT_S = 30.0  # how long a stopping run waits for a generation in flight


@dataclasses.dataclass(frozen=True)
class Generated:
    """A batch made in the background: the rollouts, when the engine was busy, and what was
    started on it as soon as it existed (the served teachers' scoring, or None)."""

    batch: Rollouts
    started: float  # time.perf_counter() at the start and end of the generation
    ended: float
    early: Any = None  # e.g. a served.Background already scoring the batch


class Ahead:
    """At most one batch generated ahead of the step being trained (see the module docstring).

    ``generate(step, version)`` makes step ``step``'s batch with the weights of version
    ``version`` (the number of updates they have had); ``early(batch)``, when given, starts work
    on a batch as soon as it exists, in the background thread.
    """

    def __init__(
        self,
        reduce: Reduce,
        generate: Callable[[int, int], Rollouts],
        early: Callable[[Rollouts], Any] | None = None,
    ):
        self._reduce = reduce
        self._generate = generate
        self._early = early
        self._future: Future[Generated] | None = None
        self._thread: threading.Thread | None = None
        self._step = -1  # the step whose batch is ahead (in flight or done)
        self._done: Generated | None = None
        self.busy: list[tuple[float, float]] = []  # the engine's last generation intervals

    # -- the schedule --------------------------------------------------------------------------

    def start(self, step: int, version: int) -> None:
        """Begin generating step ``step``'s batch in the background (nothing may be ahead)."""
        assert self._future is None and self._done is None, "one batch ahead at most"
        self._step = step
        future: Future[Generated] = Future()
        self._future = future
        device = self._reduce.info.device
        self._thread = threading.Thread(
            target=self._run, args=(future, step, version, device), name="tcopd-ahead", daemon=True
        )
        self._thread.start()

    def _run(self, future: Future, step: int, version: int, device: torch.device) -> None:
        if device.type == "cuda":  # the current CUDA device is per thread
            torch.cuda.set_device(device)
        try:
            t0 = time.perf_counter()
            batch = self._generate(step, version)
            t1 = time.perf_counter()
            early = self._early(batch) if self._early is not None else None
            future.set_result(Generated(batch, t0, t1, early))
        except BaseException as e:  # re-raised where the batch is collected
            future.set_exception(e)

    def wait(self) -> None:
        """Wait until the batch ahead exists (every rank agrees that it does)."""
        if self._future is None:
            return
        future, self._future = self._future, None
        step = self._step

        def collect() -> Generated:
            try:
                return future.result()
            except TcopdError as e:
                raise type(e)(f"generating step {step + 1}'s batch ahead: {e}") from e

        self._done = on_every_rank(self._reduce, collect)
        self.busy = [*self.busy[-1:], (self._done.started, self._done.ended)]

    def take(self, step: int) -> Generated | None:
        """The batch of ``step`` if it was generated ahead (then it is no longer held)."""
        self.wait()
        if self._done is None or self._step != step:
            return None
        done, self._done = self._done, None
        return done

    def engine_busy(self, since: float, until: float) -> float:
        """Seconds the engine generated between ``since`` and ``until`` (perf_counter times)."""
        return sum(max(0.0, min(e, until) - max(s, since)) for s, e in self.busy)

    def close(self) -> None:
        """Stop: wait up to ``CLOSE_WAIT_S`` for a generation in flight (the caller closes the
        engine next), then abandon it; a served scoring started on a batch is closed."""
        future, self._future = self._future, None
        if future is not None:
            future.add_done_callback(_close_early)
            if self._thread is not None:
                self._thread.join(CLOSE_WAIT_S)
        if self._done is not None and self._done.early is not None:
            self._done.early.close()
        self._done = None

    # -- checkpoints ---------------------------------------------------------------------------

    def save(self, directory: Path, rank: int) -> None:
        """Write the batch ahead (this rank's share) into a checkpoint being written."""
        self.wait()
        if self._done is None:
            return
        b = self._done.batch
        data = {
            "step": self._step,
            "version": b.version,
            "completions": [dataclasses.asdict(c) for c in b.completions],
            "golds": b.golds,
            "domains": b.domains,
            "messages": b.messages,
        }
        (directory / ahead_name(rank)).write_text(json.dumps(data))

    def restore(self, directory: Path, rank: int, step: int) -> bool:
        """Hold the batch of ``step`` saved in checkpoint ``directory``; False when it has none."""
        path = directory / ahead_name(rank)
        if not path.is_file():
            return False
        data = json.loads(path.read_text())
        if data["step"] != step:
            raise TrainingError(
                f"{path}: the batch ahead is step {data['step'] + 1}'s, the run resumes at "
                f"step {step + 1}"
            )
        batch = Rollouts(
            [Completion(**c) for c in data["completions"]],
            data["golds"],
            data["domains"],
            data["messages"],
            version=data["version"],
        )
        now = time.perf_counter()
        self._step, self._done = step, Generated(batch, now, now)
        return True


def ahead_name(rank: int) -> str:
    return f"ahead-rank{rank}.json"


def _close_early(future: Future[Generated]) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    early = future.result().early
    if early is not None:
        early.close()

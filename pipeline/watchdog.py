"""The driver's watchdog: a run that stops moving ends with a clear message instead of waiting for ever.

The plan check (``pipeline.plan``) refuses plans that can never be scheduled; what it cannot foresee
(a model load that hangs, resources an autoscaler never delivers, a node lost mid-run, a stage that
stops returning) is bounded here, from the driver:

* ``ProgressBoard``: a small actor (0 CPUs) that the model actors report to: one ``ready()`` when a
  model is loaded, ``rows(n)`` after each batch;
* ``WatchedEditStage``: the model stage (``pipeline.stages.EditStage``) reporting to the board;
* ``Watchdog``: a driver thread that polls the board and, when no actor is ready
  ``compute.actor_startup_timeout_s`` after the start, or no row has left the model stage for
  ``compute.progress_timeout_s`` once one is, interrupts the driver's main thread; ``execute`` turns
  that into ``Stalled`` (a ``RuntimeError``: exit 1, a rerun resumes) after Ray Data has shut its
  executor down (its actors and tasks are cancelled).
"""

from __future__ import annotations

import _thread
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from pipeline.config import ComputeConfig
from pipeline.stages import EditStage

log = logging.getLogger("pipeline")


class Stalled(RuntimeError):
    """The run made no progress for longer than the compute section allows (exit code 1)."""


class ProgressBoard:
    """Counts of the model stage, kept in one actor (created with ``num_cpus=0``)."""

    def __init__(self) -> None:
        self.ready_actors = 0
        self.rows_done = 0

    def ready(self) -> None:
        self.ready_actors += 1

    def rows(self, n: int) -> None:
        self.rows_done += int(n)

    def snapshot(self) -> tuple[int, int]:
        return self.ready_actors, self.rows_done


class WatchedEditStage(EditStage):
    """``EditStage`` that reports to a ``ProgressBoard`` (``board``: its actor handle)."""

    def __init__(self, *args: Any, board: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._board = board
        board.ready.remote()

    def __call__(self, batch: Any) -> Any:
        out = super().__call__(batch)
        self._board.rows.remote(out.num_rows)
        return out


def stall_reason(
    compute: ComputeConfig, *, now: float, started: float, ready: int, last_change: float | None, rows: int
) -> str | None:
    """Why the run counts as stalled at ``now`` (None: it does not). ``last_change``: when the board's
    counts last changed (None: never since the start)."""
    startup, progress = compute.actor_startup_timeout_s, compute.progress_timeout_s
    if ready == 0:
        if startup > 0 and now - started > startup:
            return (
                f"no model actor became ready within compute.actor_startup_timeout_s = {startup:g} s "
                f"(resources never available, or the model load hangs: see the actors' logs)"
            )
        return None
    if progress > 0 and now - (last_change if last_change is not None else started) > progress:
        return (
            f"no row finished the model stage for compute.progress_timeout_s = {progress:g} s "
            f"({ready} actor(s) ready, {rows} row(s) edited so far)"
        )
    return None


def board_snapshot(board: Any, timeout: float = 10.0) -> Callable[[], tuple[int, int]]:
    """A snapshot function over a ``ProgressBoard`` actor handle."""

    def snapshot() -> tuple[int, int]:
        import ray

        ready, rows = ray.get(board.snapshot.remote(), timeout=timeout)
        return int(ready), int(rows)

    return snapshot


class Watchdog:
    """Calls ``snapshot()`` (ready actors, rows done) every ``poll_s`` seconds from a driver thread; on
    a stall, records the reason in ``self.reason`` and interrupts the main thread
    (``_thread.interrupt_main``: a ``KeyboardInterrupt`` there, which Ray Data answers by shutting
    its executor down)."""

    def __init__(
        self,
        compute: ComputeConfig,
        snapshot: Callable[[], tuple[int, int]],
        *,
        poll_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        interrupt: Callable[[], None] = _thread.interrupt_main,
    ) -> None:
        self.compute = compute
        self.snapshot = snapshot
        limits = [t for t in (compute.actor_startup_timeout_s, compute.progress_timeout_s) if t > 0]
        self.poll_s = poll_s if poll_s is not None else min([5.0, *(t / 4 for t in limits)])
        self.clock = clock
        self.interrupt = interrupt
        self.reason: str | None = None
        self._lock = threading.Lock()
        self._stopped = False
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="diffedit-watchdog", daemon=True)
        self._sigint_before: Any = None  # SIGINT's disposition before start(), when start() replaced it

    def start(self) -> Watchdog:
        if self.compute.actor_startup_timeout_s > 0 or self.compute.progress_timeout_s > 0:
            self._handle_sigint()
            self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        self._wake.set()
        if self._sigint_before is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._sigint_before)
            self._sigint_before = None

    def _handle_sigint(self) -> None:
        """``interrupt_main`` does nothing while SIGINT is ignored or left to the OS, and a process
        started in the background by a shell without job control (``nohup cmd &`` in a script, some
        schedulers) inherits SIGINT ignored: a stalled run would then wait for ever. Python's own
        handler is installed for the run (from the main thread), and the old one restored by ``stop``."""
        self._sigint_before = None
        if (
            self.interrupt is not _thread.interrupt_main
            or threading.current_thread() is not threading.main_thread()
        ):
            return
        before = signal.getsignal(signal.SIGINT)
        if before in (signal.SIG_IGN, signal.SIG_DFL):
            self._sigint_before = before
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def _loop(self) -> None:
        started = self.clock()
        last: tuple[int, int] = (0, 0)
        last_change: float | None = None
        while not self._wake.wait(self.poll_s):
            try:
                counts = self.snapshot()
            except Exception as exc:  # the board is unreachable: the timeouts still run
                log.debug("watchdog: no snapshot (%s)", exc)
                counts = last
            now = self.clock()
            if counts != last:
                last, last_change = counts, now
            reason = stall_reason(
                self.compute, now=now, started=started, ready=last[0], last_change=last_change, rows=last[1]
            )
            if reason:
                with self._lock:
                    if self._stopped:
                        return
                    self.reason = reason
                    log.error("stalled: %s; stopping the run", reason)
                    self.interrupt()
                return

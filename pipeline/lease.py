"""Who is running on an output now: the owner's lease in ``job.json``, in the state folder
``<parent>/.<name>.diffedit/`` beside the output folder (``pipeline.output``).

The run that owns an output (``job.json``'s ``run_id``) also records where its driver runs (host
name, process id) and, every ``HEARTBEAT_S`` seconds, ``heartbeat_at``; when it ends (success,
failure, SIGTERM) it writes ``released_at``. A second run on the same output (a cron line without
``flock``, an Airflow retry racing the first try) reads the lease before it takes the output over:

* released, or no lease (an older version's ``job.json``): free;
* the same host: live while that process exists (a driver killed with SIGKILL frees the output at
  once, so a rerun right after a kill resumes);
* another host: live while its heartbeat is younger than ``STALE_S`` (after a SIGKILL there, a rerun
  waits at most that long).

A live owner makes the second run stop at once with ``OutputBusy`` (exit 5), before Ray starts or
anything is written. Two runs that start within the same instant can both pass this check; the later
one then owns ``job.json`` and the earlier stops at its first commit (``output.OwnershipLost``, also
exit 5), so each id is still committed once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any

import fsspec

from pipeline import output as O
from pipeline.storage import redact

log = logging.getLogger("pipeline")

#: Seconds between two heartbeats of a live run; a lease older than ``STALE_S`` is stale.
HEARTBEAT_S = 10.0
STALE_S = 60.0


class OutputBusy(RuntimeError):
    """Another live run owns the output (exit code 5): this run did nothing."""


def lease_fields() -> dict[str, Any]:
    """What a run adds to ``job.json`` when it takes an output over."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat_at": time.time()}


def live_owner(record: dict[str, Any] | None, now: float | None = None) -> str | None:
    """A description of the live run that ``record`` (a ``job.json``) names, or None when the output is
    free (module docstring)."""
    if not record or record.get("released_at") or "heartbeat_at" not in record:
        return None
    now = time.time() if now is None else now
    age = now - float(record["heartbeat_at"])
    who = f"run {record.get('run_id')} (host {record.get('host')}, pid {record.get('pid')}"
    if record.get("host") == socket.gethostname():
        if record.get("pid") == os.getpid() or not _process_exists(int(record.get("pid") or 0)):
            return None
        return f"{who}, a live process on this host)"
    if age < STALE_S:
        return f"{who}, heartbeat {age:.0f} s ago)"
    return None


def _process_exists(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def refuse_if_busy(record: dict[str, Any] | None, output: str) -> None:
    """``OutputBusy`` when ``record`` names a live owner of ``output``."""
    owner = live_owner(record)
    if owner:
        raise OutputBusy(
            f"output {redact(output)} is in use by {owner}: another run of it is live; this one did nothing "
            f"(a stale lease frees itself: at once on its host, after {STALE_S:g} s elsewhere)"
        )


class Heartbeat:
    """A driver thread that refreshes ``heartbeat_at`` in ``job.json`` while ``run_id`` owns it, and
    ``release()``, which writes ``released_at`` (if it still owns it) when the run ends."""

    def __init__(self, fs: fsspec.AbstractFileSystem, out: str, run_id: str, every: float = HEARTBEAT_S):
        self.fs, self.path, self.run_id, self.every = fs, O.state(out, O.JOB_FILE), run_id, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="diffedit-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def _update(self, **fields: Any) -> bool:
        record = O.read_json(self.fs, self.path)
        if not record or record.get("run_id") != self.run_id:
            return False  # another run took over, or the folder is gone: nothing of ours to refresh
        O.write_json_atomic(self.fs, self.path, {**record, **fields})
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            try:
                if not self._update(heartbeat_at=time.time()):
                    return
            except Exception as exc:  # storage trouble: the next beat tries again
                log.debug("heartbeat of %s failed: %s", self.path, exc)

    def release(self, wait: float = 10.0) -> None:
        """Stop beating and write ``released_at``; waits at most ``wait`` seconds for each (storage that
        hangs, a run that failed because of it, must not hold the driver's exit for botocore's retries:
        an unreleased lease frees itself, module docstring)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=wait)

        def write() -> None:
            with contextlib.suppress(Exception):
                self._update(released_at=time.time())

        releasing = threading.Thread(target=write, name="diffedit-release", daemon=True)
        releasing.start()
        releasing.join(timeout=wait)

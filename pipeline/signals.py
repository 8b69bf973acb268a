"""SIGTERM as a clean stop: the signal becomes a ``Terminated`` exception in the main thread, so the run
unwinds (Ray Data stops its executor, the driver shuts Ray down) and the CLI exits with
``EXIT_TERMINATED`` and one line, instead of Ray's own handler (``sys.exit(15)`` from inside a Ray
call, which tears the core worker down mid-call with a C++ stack dump).

Rows already committed stay committed (parts are atomic), ``_SUCCESS`` is not written, and a rerun
resumes: the same as any failed run, but reported as what it was.
"""

from __future__ import annotations

import signal

#: 128 + 15, the shell's code for "killed by SIGTERM", which Airflow, systemd and timeout(1) users
#: recognise: the run was stopped from outside, not failed by its own fault.
EXIT_TERMINATED = 128 + signal.SIGTERM

_installed = False


class Terminated(BaseException):
    """SIGTERM arrived (Airflow's execution_timeout, ``kill``, a scheduler stopping the job)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def install() -> None:
    """Handle SIGTERM by raising ``Terminated`` in the main thread (call from the main thread)."""
    global _installed
    signal.signal(signal.SIGTERM, _raise_terminated)
    _installed = True


def reinstall_if_installed() -> None:
    """After ``ray.init``, which installs its own SIGTERM handler: put ours back if the CLI set it."""
    if _installed:
        signal.signal(signal.SIGTERM, _raise_terminated)


def uninstall() -> None:
    global _installed
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _installed = False

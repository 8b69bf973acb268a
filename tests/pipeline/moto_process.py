"""A moto S3 server as a subprocess (``moto_server -H 127.0.0.1 -p PORT``), so that a test can pause
(SIGSTOP), resume (SIGCONT), kill (SIGKILL: its state is lost) and restart it on the same port, and a
watcher that injects such a fault when the server logs a request matching a pattern (the request that
matched has been answered; the ones after it meet the fault)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

MOTO_SERVER = Path(sys.executable).with_name("moto_server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoProcess:
    """One ``moto_server`` process on 127.0.0.1:``port``; its request log goes to ``log_path``."""

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.paused = False

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        self.paused = False
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).close()
                return
            except Exception:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(
                        f"moto_server did not start: {self.log_path.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.1)

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        """SIGKILL: every bucket and object is gone; the port refuses connections until ``start``."""
        if self.proc is not None and self.proc.poll() is None:
            if self.paused:
                self.resume()
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        self.kill()


class FaultWatcher:
    """Calls ``action`` once, when the server's log shows a request matching ``pattern``."""

    def __init__(self, server: MotoProcess, pattern: str, action: Callable[[], None]) -> None:
        self.server, self.pattern, self.action = server, re.compile(pattern), action
        self.fired_at: float | None = None
        self._stop = threading.Event()
        self._offset = server.log_path.stat().st_size if server.log_path.exists() else 0
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> FaultWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        while not self._stop.is_set():
            with self.server.log_path.open("rb") as f:
                f.seek(self._offset)
                text = f.read().decode(errors="replace")
            if self.pattern.search(text):
                self.fired_at = time.time()
                self.action()
                return
            time.sleep(0.01)

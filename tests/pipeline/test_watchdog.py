"""The driver's watchdog (issue 9, item 4): a run whose actors never start, or whose rows stop moving,
ends by the configured time with exit code 1 and one clear line, instead of waiting for ever."""

from __future__ import annotations

import threading
import time

import pytest
from pipeline_testing import state_file, write_job
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import ComputeConfig
from pipeline.watchdog import Watchdog


class FakeClock:
    """A clock that moves ``step`` seconds at every reading: the watchdog's timeouts pass in a few polls,
    whatever the machine's load (the tests used wall time: 0.5 s timeouts checked within 3 s)."""

    def __init__(self, step: float = 0.1) -> None:
        self.now, self.step = 0.0, step
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            self.now += self.step
            return self.now


class Interrupts:
    """An injected ``interrupt``: records the clock's time of each call and wakes the test."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock, self.at, self.event = clock, [], threading.Event()

    def __call__(self) -> None:
        self.at.append(self.clock.now)
        self.event.set()


#: Wall-clock bound for a watchdog thread to act on a fake clock: generous, for a loaded machine.
GENEROUS_S = 120


def test_no_actor_ready_interrupts_after_the_startup_timeout():
    clock = FakeClock()
    interrupts = Interrupts(clock)
    compute = ComputeConfig(actor_startup_timeout_s=0.5, progress_timeout_s=100)
    dog = Watchdog(compute, lambda: (0, 0), poll_s=0.001, clock=clock, interrupt=interrupts).start()
    assert interrupts.event.wait(GENEROUS_S)
    dog.stop()
    assert len(interrupts.at) == 1 and 0.5 < interrupts.at[0] - 0.1 <= 0.5 + 2 * clock.step  # started at 0.1
    assert "no model actor became ready within compute.actor_startup_timeout_s = 0.5 s" in dog.reason


def test_rows_that_stop_moving_interrupt_after_the_progress_timeout():
    counts = iter([(1, 0), (1, 4), (1, 8)])
    last = [(0, 0)]

    def snapshot():
        last[0] = next(counts, last[0])  # moves three times, then never again
        return last[0]

    clock = FakeClock()
    interrupts = Interrupts(clock)
    compute = ComputeConfig(actor_startup_timeout_s=100, progress_timeout_s=0.5)
    dog = Watchdog(compute, snapshot, poll_s=0.001, clock=clock, interrupt=interrupts).start()
    assert interrupts.event.wait(GENEROUS_S)
    dog.stop()
    # readings: start 0.1; polls at 0.2 (1, 0), 0.3 (1, 4), 0.4 (1, 8: the last change), then still
    assert len(interrupts.at) == 1 and 0.9 < interrupts.at[0] <= 0.9 + 2 * clock.step
    assert "no row finished the model stage for compute.progress_timeout_s = 0.5 s" in dog.reason
    assert "1 actor(s) ready, 8 row(s) edited so far" in dog.reason


def test_a_watchdog_stopped_during_a_poll_never_interrupts():
    """stop() while the watchdog thread is deciding (the run ended just as the timeout passed): no
    interrupt, no reason."""
    clock = FakeClock(step=10.0)  # every poll is past the timeouts
    interrupts = Interrupts(clock)
    compute = ComputeConfig(actor_startup_timeout_s=0.2, progress_timeout_s=0.2)
    dog: Watchdog | None = None

    def snapshot():
        dog.stop()  # the run ends while this poll is in progress
        return (0, 0)

    dog = Watchdog(compute, snapshot, poll_s=0.001, clock=clock, interrupt=interrupts).start()
    dog._thread.join(GENEROUS_S)
    assert not dog._thread.is_alive()
    assert interrupts.at == [] and dog.reason is None


def test_a_stopped_watchdog_never_interrupts():
    clock = FakeClock(step=10.0)
    interrupts = Interrupts(clock)
    compute = ComputeConfig(actor_startup_timeout_s=0.2, progress_timeout_s=0.2)
    dog = Watchdog(compute, lambda: (0, 0), poll_s=3600, clock=clock, interrupt=interrupts).start()
    dog.stop()
    dog._thread.join(GENEROUS_S)
    assert not dog._thread.is_alive()  # stop() woke it from its hour-long wait
    assert interrupts.at == [] and dog.reason is None


def test_resources_that_never_come_end_the_run_with_exit_1(ray_cluster, tiny_model, tmp_path, monkeypatch):
    """Another job holds every CPU of the cluster: the plan is valid (the cluster is large enough), but
    no actor can start. Before: the run waited for ever; now it ends after actor_startup_timeout_s."""
    import ray

    from pipeline.config import StorageConfig
    from pipeline.prepare import SHAPES_SCHEMA, shapes_rows, write_manifest

    monkeypatch.chdir(tmp_path)
    write_manifest(shapes_rows(2, seed=0, size=32), "manifest", StorageConfig(), SHAPES_SCHEMA)
    job = write_job(
        tmp_path / "job.yaml",
        f"input: {{paths: [manifest]}}\noutput: {{path: out}}\nmodel: {{source: {tiny_model}}}\n"
        "params: {num_inference_steps: 4}\n"
        "compute: {actors: 1, cpus_per_actor: 0.5, io_cpus: 0.25, actor_startup_timeout_s: 8}\n",
    )

    @ray.remote(num_cpus=2)
    class Hog:
        def ping(self) -> bool:
            return True

    hog = Hog.remote()
    ray.get(hog.ping.remote())
    try:
        start = time.monotonic()
        result = CliRunner().invoke(app, ["run", str(job)])
        took = time.monotonic() - start
    finally:
        ray.kill(hog)
    assert result.exit_code == 1, result.output
    error = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(error) == 1 and "Stalled: no model actor became ready within" in error[0], result.output
    assert "actor_startup_timeout_s = 8 s" in error[0]
    assert 8 <= took < 600  # ends by the timeout, not never (generous: a cold actor start under load)
    assert not state_file(tmp_path / "out", "_SUCCESS").exists()
    # The cluster is usable again: the job now finishes (with time for a cold actor start: spawning a
    # worker and importing torch takes more than 8 s on a busy 2-core machine).
    job.write_text(job.read_text().replace("actor_startup_timeout_s: 8", "actor_startup_timeout_s: 600"))
    again = CliRunner().invoke(app, ["run", str(job)])
    assert again.exit_code == 0, again.output


def test_the_interrupt_works_when_sigint_was_ignored():
    """A run started in the background by a shell without job control (``nohup cmd &`` in a script)
    inherits SIGINT ignored, and ``interrupt_main`` then does nothing: a stalled run waited for ever.
    The watchdog installs Python's handler for the run and puts the old disposition back on stop.
    (The real ``interrupt_main`` here, on a fake clock.)"""
    import signal

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        compute = ComputeConfig(actor_startup_timeout_s=0.5, progress_timeout_s=100)
        dog = Watchdog(compute, lambda: (0, 0), poll_s=0.001, clock=FakeClock())
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            dog.start()
            while time.monotonic() - start < GENEROUS_S:
                time.sleep(0.01)
        assert dog.reason is not None
        dog.stop()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)

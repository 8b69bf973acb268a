"""The driver's watchdog (issue 9, item 4): a run whose actors never start, or whose rows stop moving,
ends by the configured time with exit code 1 and one clear line, instead of waiting for ever."""

from __future__ import annotations

import time

import pytest
from pipeline_testing import write_job
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import ComputeConfig
from pipeline.watchdog import Watchdog


def _wait_interrupted(dog: Watchdog, seconds: float) -> float:
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        dog.start()
        while time.monotonic() - start < seconds:
            time.sleep(0.01)
    return time.monotonic() - start


def test_no_actor_ready_interrupts_the_main_thread_after_the_startup_timeout():
    compute = ComputeConfig(actor_startup_timeout_s=0.5, progress_timeout_s=100)
    dog = Watchdog(compute, lambda: (0, 0), poll_s=0.05)
    took = _wait_interrupted(dog, 10)
    assert 0.5 <= took < 3
    assert "no model actor became ready within compute.actor_startup_timeout_s = 0.5 s" in dog.reason


def test_rows_that_stop_moving_interrupt_after_the_progress_timeout():
    counts = iter([(1, 0), (1, 4), (1, 8)])
    last = [(0, 0)]

    def snapshot():
        last[0] = next(counts, last[0])  # moves three times, then never again
        return last[0]

    compute = ComputeConfig(actor_startup_timeout_s=100, progress_timeout_s=0.5)
    dog = Watchdog(compute, snapshot, poll_s=0.05)
    took = _wait_interrupted(dog, 10)
    assert 0.6 <= took < 3
    assert "no row finished the model stage for compute.progress_timeout_s = 0.5 s" in dog.reason
    assert "1 actor(s) ready, 8 row(s) edited so far" in dog.reason


def test_a_stopped_watchdog_never_interrupts():
    compute = ComputeConfig(actor_startup_timeout_s=0.2, progress_timeout_s=0.2)
    dog = Watchdog(compute, lambda: (0, 0), poll_s=0.05).start()
    dog.stop()
    time.sleep(0.5)  # a KeyboardInterrupt here would fail the test
    assert dog.reason is None


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
    assert 8 <= took < 60
    assert not (tmp_path / "out" / ".diffedit" / "_SUCCESS").exists()
    # The cluster is usable again: the job now finishes (with time for a cold actor start: spawning a
    # worker and importing torch takes more than 8 s on a busy 2-core machine).
    job.write_text(job.read_text().replace("actor_startup_timeout_s: 8", "actor_startup_timeout_s: 600"))
    again = CliRunner().invoke(app, ["run", str(job)])
    assert again.exit_code == 0, again.output


def test_the_interrupt_works_when_sigint_was_ignored():
    """A run started in the background by a shell without job control (``nohup cmd &`` in a script)
    inherits SIGINT ignored, and ``interrupt_main`` then does nothing: a stalled run waited for ever.
    The watchdog installs Python's handler for the run and puts the old disposition back on stop."""
    import signal

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        compute = ComputeConfig(actor_startup_timeout_s=0.5, progress_timeout_s=100)
        dog = Watchdog(compute, lambda: (0, 0), poll_s=0.05)
        took = _wait_interrupted(dog, 10)
        assert 0.5 <= took < 3 and dog.reason is not None
        dog.stop()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)

"""Issue 20, item 5: overlapping runs and Ray's raw messages.

* A second run on an output that a live run owns (a cron line without ``flock``, an Airflow retry
  racing the first try) sees the owner's lease in ``job.json`` and exits 5 at once, doing nothing; the
  first run finishes undisturbed and releases the lease.
* A run whose output is taken over under it, or whose ``job.json`` is deleted, ends with one line
  saying so (exit 5, exit 1), not ``RayTaskError(OwnershipLost) ... configure ray.data.DataContext``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pipeline_testing import REPO, png_bytes, read_output, state_file, write_manifest
from typer.testing import CliRunner

from pipeline.cli import _cause, app
from pipeline.lease import STALE_S, live_owner

ROWS = 8


def record(**fields) -> dict:
    return {"run_id": "20990101T000000Z-aaaa", "heartbeat_at": time.time(), **fields}


def test_live_owner_reads_the_lease():
    here = socket.gethostname()
    assert live_owner(None) is None
    assert live_owner({"run_id": "old"}) is None  # an older version's job.json: no lease
    assert "pid" in live_owner(record(host=here, pid=os.getppid()))  # a live process on this host
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert live_owner(record(host=here, pid=dead.pid)) is None  # killed: free at once
    assert live_owner(record(host=here, pid=os.getpid())) is None  # this very process
    assert "heartbeat" in live_owner(record(host="elsewhere", pid=1))
    assert live_owner(record(host="elsewhere", pid=1, heartbeat_at=time.time() - STALE_S - 1)) is None
    assert live_owner(record(host=here, pid=os.getppid(), released_at=time.time())) is None


def test_the_original_error_line_replaces_rays_text():
    text = (
        'ray::Write() (pid=10506, ip=192.0.2.2)\n  File "/x/output.py", line 251, in commit_table\n'
        "    raise OwnershipLost(...)\npipeline.output.OwnershipLost: output /o is now owned by run B\n"
        "Failed to apply UDF transform after 1/4 attempts (total backoff 0.0s).\nTo change retry attempts, "
        "configure `ray.data.DataContext.get_current()` (`retried_io_errors` for I/O) if transient."
    )
    assert _cause(RuntimeError(text)) == "OwnershipLost: output /o is now owned by run B"
    assert _cause(ValueError("plain")) == "ValueError: plain"


def make_job(tmp_path: Path, tiny_model: Path, steps: int = 12) -> tuple[Path, Path]:
    write_manifest(tmp_path / "in" / "m.parquet",
                   [{"id": f"r{i}", "image_bytes": png_bytes(i), "query": "a blue circle"} for i in range(ROWS)])  # fmt: skip
    out = tmp_path / "out"
    job = tmp_path / "job.yaml"
    job.write_text(
        f"input: {{paths: ['{tmp_path / 'in'}']}}\noutput: {{path: '{out}', rows_per_file: 2}}\n"
        f"model: {{source: '{tiny_model}'}}\nparams: {{num_inference_steps: {steps}, num_mask_draws: 2}}\n"
        "compute: {batch_size: 1, rows_per_block: 2, torch_threads: 1}\n"
    )
    return job, out


def owner(out: Path) -> dict | None:
    try:
        return json.loads(state_file(out, "job.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def wait_for(condition, what: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_second_run_on_a_live_output_exits_5_at_once(ray_cluster, tiny_model, tmp_path):
    job, out = make_job(tmp_path, tiny_model)
    log_path = tmp_path / "first.log"
    with log_path.open("wb") as log:
        first = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "run", str(job), "--address", ray_cluster],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_for(lambda: (owner(out) or {}).get("pid") == first.pid, "the first run's lease")
            lease = owner(out)
            started = time.time()
            second = CliRunner().invoke(app, ["run", str(job), "--address", ray_cluster])
            took = time.time() - started
            assert second.exit_code == 5, second.output
            assert f"is in use by run {lease['run_id']}" in second.output
            assert took < 15, took  # at once: no Ray Data plan, no model
            assert owner(out)["run_id"] == lease["run_id"]  # the first run still owns it
            assert first.wait(timeout=300) == 0, log_path.read_text()[-3000:]
        finally:
            if first.poll() is None:
                first.kill()
    assert sorted(read_output(out).column("id").to_pylist()) == [f"r{i}" for i in range(ROWS)]
    assert owner(out).get("released_at")  # released when it ended: the next run is not refused
    again = CliRunner().invoke(app, ["run", str(job), "--address", ray_cluster])
    assert again.exit_code == 0 and "already complete" in again.output, again.output
    print(f"second run refused in {took:.1f} s")


@pytest.mark.slow  # two runs of the tiny model, ~70 s
@pytest.mark.parametrize("change", ["taken_over", "deleted"])
def test_a_run_that_loses_its_output_ends_with_one_line(ray_cluster, tiny_model, tmp_path, change):
    job, out = make_job(tmp_path, tiny_model, steps=20)

    def tamper() -> None:
        wait_for(lambda: any(out.glob("part-*.parquet")), "the first part")
        path = state_file(out, "job.json")
        if change == "taken_over":  # what a racing second run's job.json looks like
            path.write_text(json.dumps({**owner(out), "run_id": "20990101T000000Z-other", "pid": 0}))
        else:
            path.unlink()

    thread = threading.Thread(target=tamper)
    thread.start()
    result = CliRunner().invoke(app, ["run", str(job), "--address", ray_cluster])
    thread.join()
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "RayTaskError" not in errors[0] and "DataContext" not in errors[0], errors[0]
    if change == "taken_over":
        assert result.exit_code == 5, result.output
        assert "was taken over by run 20990101T000000Z-other" in errors[0]
    else:
        assert result.exit_code == 1, result.output
        assert f"its {state_file(out, 'job.json')} is gone" in errors[0]

"""The logs of an unattended run (README, "Progress and logs"): no false alarms."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from pipeline_testing import (
    REPO,
    cli,
    make_checkout,
)

# --------------------------------------------------------------------------- 10. logs


@pytest.mark.slow
def test_the_demo_job_logs_no_false_alarms(tiny_model, tmp_path):
    """`make demo`'s run as cron runs it (a fresh local Ray, output to a file, not a TTY): no ERROR line,
    no ANSI escape, no token-auth notice, no weight-loading progress bar."""
    checkout = make_checkout(tmp_path / "checkout", tiny_model, rows=2)
    # as cron has it: no RAY_ADDRESS, and none of the test session's settings (it disables progress bars)
    env = {"RAY_ADDRESS": None, "RAY_DATA_DISABLE_PROGRESS_BARS": None}
    result = cli("run", "jobs/shapes_recolor.yaml", cwd=checkout, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    logs = result.stdout + result.stderr
    offending = [
        line for line in logs.splitlines() if "ERROR" in line or " E " in line[:40] or "\x1b[" in line
    ]
    assert offending == [], offending
    for noise in (
        "Token authentication",
        "Loading weights",
        "max_restarts",
        "Progress bars disabled",
        "it/s]",
    ):
        assert noise not in logs, noise
    assert "succeeded: 2 ok, 0 failed" in result.stdout


DRIVER = r"""
import select, sys
import ray
from pipeline.job import connect_ray

connect_ray(sys.argv[1])

@ray.remote
def speak():
    print("worker-line-for-the-log", file=sys.stderr, flush=True)

ray.get(speak.remote())
select.select([sys.stdin], [], [], 120)  # until the test has read the forwarded line (or 2 minutes)
ray.shutdown()
"""


def test_forwarded_worker_lines_reach_a_file_log_without_ansi_codes(ray_cluster, tmp_path):
    """A worker's (or Ray's own gcs_server's) line forwarded to the driver's log: under cron or Airflow
    that log is a file, and Ray colours the "(pid=...)" prefix unless told not to, so the file held
    escape codes (a CI run's SIGTERM test caught one on a gcs_server line). The driver's stderr here is
    a pipe, as it is under cron: the line arrives, uncoloured."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_COLOR_PREFIX"}
    env["PYTHONPATH"] = str(REPO)
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, ray_cluster], cwd=tmp_path, env=env,
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            line = driver.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "worker-line-for-the-log" in line:
                break
        driver.stdin.write("done\n")
        driver.stdin.flush()
        rest = driver.communicate(timeout=120)[1]
    finally:
        if driver.poll() is None:
            driver.kill()
    forwarded = [line for line in lines if "worker-line-for-the-log" in line]
    assert forwarded, "".join(lines)[-3000:]
    assert "(speak pid=" in forwarded[0], forwarded  # Ray's prefix, kept
    assert "\x1b[" not in "".join(lines) + rest, ("".join(lines) + rest)[-3000:]
    assert driver.returncode == 0, rest[-3000:]


def test_a_users_colour_setting_stays(monkeypatch):
    """Only an unset ``RAY_COLOR_PREFIX`` is set (to 0, stderr being no terminal under pytest)."""
    from pipeline.job import _plain_forwarded_lines

    monkeypatch.setenv("RAY_COLOR_PREFIX", "1")
    _plain_forwarded_lines()
    assert os.environ["RAY_COLOR_PREFIX"] == "1"
    monkeypatch.delenv("RAY_COLOR_PREFIX")
    _plain_forwarded_lines()
    assert os.environ["RAY_COLOR_PREFIX"] == "0"

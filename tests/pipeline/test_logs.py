"""The logs of an unattended run (README, "Progress and logs"): no false alarms."""

from __future__ import annotations

import pytest
from pipeline_testing import (
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

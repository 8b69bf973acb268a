"""Parts are committed as their rows finish, not at the end of the run (issue 20, item 1).

On a 2-CPU local Ray whose model actor holds one CPU, Ray Data's resource budget never had a whole CPU
for the re-blocking step before the sink (Ray's default for a map task) while the stages upstream of
it ran: every part landed in the last seconds of the run, and a run killed at 90 % had committed
nothing. Here the driver is killed with SIGKILL when 16 of 24 rows are edited: by then their parts
must be committed but those in flight (a kill loses at most the rows in flight), and a rerun
finishes with every id exactly once, editing only the rows that were not committed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pipeline_testing import REPO, png_bytes, read_output, state_file, write_manifest
from typer.testing import CliRunner

from pipeline.cli import app

ROWS, PER_FILE = 24, 4


def committed_rows(out: Path) -> dict[str, int]:
    """Committed part -> its row count (from the footer; parts are renamed into place complete)."""
    return {p.name: pq.read_metadata(p).num_rows for p in sorted(out.glob("part-*.parquet"))}


#: Rows edited (Ray Data's count for the model stage) when the driver is killed.
KILL_AT = 16
_EDITED = re.compile(rb"MapBatches\(WatchedEditStage\): (\d+)/")


def rows_edited(log: Path) -> int:
    """The model stage's latest row count in the driver's log (0 before the first progress line)."""
    counts = _EDITED.findall(log.read_bytes())
    return int(counts[-1]) if counts else 0


def driver_env() -> dict[str, str]:
    """The test's environment without a Ray address (the driver starts its own local Ray), with Ray
    Data's progress lines on, every second."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_DATA_DISABLE_PROGRESS_BARS")}
    return {**env, "RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL": "1"}


def two_cpus() -> None:
    """Runs in the driver's process before it starts: at most 2 CPUs, the machines the demo must run on."""
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2])


@pytest.mark.slow  # ~75 s: a local Ray of its own, 24 + 8 rows
def test_parts_land_as_rows_finish_and_a_kill_loses_only_rows_in_flight(ray_cluster, tiny_model, tmp_path):
    ids = [f"row-{i:02d}" for i in range(ROWS)]
    write_manifest(
        tmp_path / "manifest" / "part-0.parquet",
        [{"id": i, "image_bytes": png_bytes(n), "caption": "a red circle", "query": "a blue circle"}
         for n, i in enumerate(ids)],
    )  # fmt: skip
    out = tmp_path / "out"
    job = tmp_path / "job.yaml"
    # Blocks of 4 rows stream through one actor, one row per model call (~0.5 s a row on one thread):
    # a part of 4 rows can be committed every ~2 s, long before the 24th row is edited.
    job.write_text(
        f"""
name: commit-as-you-go
input: {{paths: ["{tmp_path / "manifest"}"]}}
output: {{path: "{out}", rows_per_file: {PER_FILE}}}
model: {{source: "{tiny_model}"}}
params: {{num_inference_steps: 12, encode_ratio: 1.0, num_mask_draws: 2}}
compute: {{batch_size: 1, rows_per_block: 4, torch_threads: 1}}
failure: {{max_failed_fraction: 0.0}}
"""
    )
    log_path = tmp_path / "driver.log"
    with log_path.open("wb") as log:
        started = time.time()
        # As cron runs it: no address, so the driver starts a local Ray sized to its 2 CPUs. (On the
        # session's shared cluster, with its 256 MiB object store, Ray Data's budget happened to let
        # the parts through; the local Ray of a real run did not.) Ray Data logs each stage's row
        # count every second (not a terminal): that is how the test knows how far the edits are.
        driver = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "run", str(job)],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=driver_env(), preexec_fn=two_cpus,
        )  # fmt: skip
        first_part_s = None
        try:
            deadline = started + 300
            while (edited := rows_edited(log_path)) < KILL_AT:
                assert driver.poll() is None, f"the run ended early:\n{log_path.read_text()[-3000:]}"
                assert time.time() < deadline, "the edits did not progress in time"
                if first_part_s is None and committed_rows(out):
                    first_part_s = time.time() - started
                time.sleep(0.02)
            os.kill(driver.pid, signal.SIGKILL)  # mid-way: 2/3 of the rows edited, the run not over
            killed_s = time.time() - started
            driver.wait(timeout=30)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait(timeout=30)
    assert driver.returncode == -signal.SIGKILL
    assert edited < ROWS

    time.sleep(3)  # the dead driver's workers may still commit a part in flight: that is allowed
    parts = committed_rows(out)
    done = sum(parts.values())
    print(
        f"killed after {killed_s:.1f} s with {edited} of {ROWS} rows edited; first part after "
        f"{first_part_s if first_part_s is None else round(first_part_s, 1)} s; {done} rows committed"
    )
    assert all(n == PER_FILE for n in parts.values()), parts  # complete parts of exactly 4 rows
    # Committed as they finish: of the 16 rows edited, all but those still on their way to the sink
    # (at most a part or so) are committed. Before the fix, nothing was: every part landed after the
    # 24th row, in the run's last seconds.
    assert done >= 2 * PER_FILE, (edited, parts)
    assert not state_file(out, "_SUCCESS").exists()

    result = CliRunner().invoke(app, ["run", str(job), "--address", ray_cluster])
    assert result.exit_code == 0, result.output
    summary = json.loads(state_file(out, "summary.json").read_text())
    assert summary["this_run"]["rows_already_done"] == done
    assert summary["this_run"]["rows_edited"] == ROWS - done  # only the rows not committed
    table = read_output(out)
    assert sorted(table.column("id").to_pylist()) == ids  # every id exactly once
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert state_file(out, "_SUCCESS").exists()

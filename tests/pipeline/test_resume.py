"""Kill and resume: a run whose driver is killed with SIGKILL part-way, then rerun, edits only the
missing rows; the output holds each id exactly once; no half-written file is ever visible."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
from pipeline_testing import REPO, png_bytes, read_output, state_file, write_manifest
from typer.testing import CliRunner

from pipeline.cli import app

ROWS = 10


def committed(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("part-*.parquet"))}


def test_sigkill_then_rerun_edits_only_the_missing_rows(ray_cluster, tiny_model, tmp_path):
    write_manifest(
        tmp_path / "manifest" / "part-0.parquet",
        [{"id": f"row-{i:02d}", "image_bytes": png_bytes(i), "caption": "a red circle", "query": "a blue circle"}
         for i in range(ROWS)],
    )  # fmt: skip
    out = tmp_path / "out"
    job = tmp_path / "job.yaml"
    # About a second per row on one thread: slow enough to kill the driver part-way.
    job.write_text(
        f"""
name: resume
input: {{paths: ["{tmp_path / "manifest"}"]}}
output: {{path: "{out}", rows_per_file: 1}}
model: {{source: "{tiny_model}"}}
params: {{num_inference_steps: 40, encode_ratio: 1.0, num_mask_draws: 4}}
compute: {{batch_size: 1, rows_per_block: 1, torch_threads: 1}}
failure: {{max_failed_fraction: 0.0}}
"""
    )
    log = (tmp_path / "driver.log").open("wb")
    driver = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", str(job), "--address", ray_cluster],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.time() + 600  # generous: the first rows wait for an actor start
        while len(committed(out)) < 2:
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.time() < deadline, "no part committed in time"
            time.sleep(0.05)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    assert driver.returncode == -signal.SIGKILL

    # What a reader sees after the kill: only complete files; no _SUCCESS.
    time.sleep(3)  # the dead driver's workers may still commit for a moment: that is allowed
    before = committed(out)
    assert 2 <= len(before) < ROWS, "the kill should land part-way"
    for name in before:
        assert pq.read_table(out / name).num_rows == 1  # every visible part is a complete Parquet file
    assert not state_file(out, "_SUCCESS").exists()
    first_run = json.loads(state_file(out, "job.json").read_text())["run_id"]

    result = CliRunner().invoke(app, ["run", str(job), "--address", ray_cluster])
    assert result.exit_code == 0, result.output
    summary = json.loads(state_file(out, "summary.json").read_text())
    done_before = summary["this_run"]["rows_already_done"]
    assert done_before >= len(before)
    assert summary["this_run"]["rows_edited"] == ROWS - done_before  # only the missing rows
    assert state_file(out, "_SUCCESS").exists()

    table = read_output(out)
    ids = table.column("id").to_pylist()
    assert sorted(ids) == [f"row-{i:02d}" for i in range(ROWS)]  # each id exactly once
    assert set(table.column("status").to_pylist()) == {"ok"}
    runs = table.column("run_id").to_pylist()
    assert runs.count(first_run) == done_before and runs.count(summary["run_id"]) == ROWS - done_before
    for name, data in before.items():  # rows committed before the kill were not redone
        assert (out / name).read_bytes() == data
    assert not list(state_file(out, "staging").glob("*"))
    print(
        f"killed after {len(before)} committed rows; rerun skipped {done_before}, edited {ROWS - done_before}"
    )

    # --overwrite starts afresh
    again = CliRunner().invoke(app, ["run", str(job), "--address", ray_cluster, "--overwrite"])
    assert again.exit_code == 0, again.output
    summary = json.loads(state_file(out, "summary.json").read_text())
    assert summary["this_run"]["rows_edited"] == ROWS and summary["this_run"]["rows_already_done"] == 0
    assert sorted(read_output(out).column("id").to_pylist()) == sorted(ids)

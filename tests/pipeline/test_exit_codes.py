"""README's exit codes, with the CLI as cron and Airflow run it (real processes where the process itself
is what is tested): storage unreachable (1, a rerun resumes); no storage credentials, a Jobs API URL as
RAY_ADDRESS, a missing Ray token (2); a model the actors cannot load, an integrity check that fails (1,
and a rerun resumes); SIGTERM (143, and a rerun resumes); an actor that dies mid-run (replaced: the
run still commits every id once)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pipeline_testing import (
    FAST_PARAMS,
    REPO,
    cli,
    dead_port,
    error_lines,
    png_bytes,
    read_output,
    state_file,
    write_manifest,
)
from typer.testing import CliRunner

from pipeline import output as O
from pipeline.cli import app

#: The environment of a machine without AWS credentials (no keys, no profile files, no instance role).
NO_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": None,
    "AWS_SECRET_ACCESS_KEY": None,
    "AWS_SESSION_TOKEN": None,
    "AWS_PROFILE": None,
    "AWS_EC2_METADATA_DISABLED": "true",
}


def test_missing_storage_credentials_exit_2(tiny_model, tmp_path):
    """No credentials is a configuration error (2: a rerun fails the same way), not storage trouble
    (1: a rerun resumes), for the input and for the model; nothing is written."""
    env = {
        **NO_CREDENTIALS,
        "HOME": str(tmp_path),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "RAY_ADDRESS": None,
    }
    storage = (
        f"storage: {{endpoint_url: 'http://127.0.0.1:{dead_port()}', max_attempts: 1, connect_timeout: 1}}\n"
    )
    (tmp_path / "input.yaml").write_text(
        f"input: {{paths: ['s3://bucket/manifests/']}}\noutput: {{path: out}}\nmodel: {{source: '{tiny_model}'}}\n"
        + storage
    )
    write_manifest(tmp_path / "in" / "m.parquet", [{"id": "a", "image_bytes": png_bytes(0), "query": "q"}])
    (tmp_path / "model.yaml").write_text(
        "input: {paths: [in]}\noutput: {path: out}\nmodel: {source: 's3://models/sd'}\n" + storage
    )
    for command, job, where in (("run", "input.yaml", "input.paths[0]: s3://bucket/manifests/"),
                                ("validate", "model.yaml", "model.source s3://models/sd")):  # fmt: skip
        result = cli(command, job, cwd=tmp_path, env=env)
        assert result.returncode == 2, (command, result.stdout, result.stderr[-3000:])
        errors = error_lines(result.stderr)
        assert len(errors) == 1 and errors[0].startswith("error: config: "), result.stderr[-3000:]
        assert where in errors[0] and "no storage credentials in the environment" in errors[0]
    assert not (tmp_path / "out").exists()


def _job(tmp_path: Path, model: Path, rows: int, params: dict | None = None) -> Path:
    write_manifest(
        tmp_path / "manifest" / "part-0.parquet",
        [{"id": f"row-{i:02d}", "image_bytes": png_bytes(i), "caption": "a red circle", "query": "a blue circle"}
         for i in range(rows)],
    )  # fmt: skip
    values = ", ".join(f"{k}: {v}" for k, v in (params or FAST_PARAMS).items())
    job = tmp_path / "job.yaml"
    job.write_text(
        f"input: {{paths: ['{tmp_path / 'manifest'}']}}\n"
        f"output: {{path: '{tmp_path / 'out'}', rows_per_file: 1}}\nmodel: {{source: '{model}'}}\n"
        f"params: {{{values}}}\ncompute: {{batch_size: 1, rows_per_block: 1, torch_threads: 1}}\n"
    )
    return job


def test_a_model_the_actors_cannot_load_exits_1(ray_cluster, tiny_model, tmp_path):
    """The preflight sees a complete layout (it never loads weights); the actors cannot load it: the
    UNet's weights file is not safetensors. Exit 1 with one line, nothing committed, no _SUCCESS."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    weights = next((model / "unet").glob("*.safetensors"))
    weights.write_bytes(b"not a safetensors file")
    job = _job(tmp_path, model, rows=2)
    result = CliRunner().invoke(app, ["run", str(job), "--address", ray_cluster])
    assert result.exit_code == 1, result.output
    errors = error_lines(result.output)
    assert len(errors) == 1 and errors[0].startswith("error: run failed: "), result.output
    assert errors[0].endswith("; a rerun resumes")
    # the line names the actor's own error (since issue 20 item 5), not Ray's ActorDiedError wrapper
    assert "SafetensorError" in errors[0] and "header" in errors[0], errors[0]
    out = tmp_path / "out"
    assert not list(out.glob("part-*.parquet")) and not state_file(out, O.SUCCESS_FILE).exists()


#: About a second per row of the tiny model on one thread: a run lasts long enough to act on part-way.
SLOW_ROWS = {"num_inference_steps": 40, "encode_ratio": 1.0, "num_mask_draws": 4}


def _committed(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("part-*.parquet"))}


def _start_driver(job: Path, ray_address: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", str(job), "--address", ray_address],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def _wait_for_parts(driver: subprocess.Popen, out: Path, log: Path, n: int = 1, seconds: float = 400) -> None:
    deadline = time.monotonic() + seconds
    while len(_committed(out)) < n:
        assert driver.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no part committed in time"
        time.sleep(0.05)


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the parent's pid
    return False


def _model_actor_pids() -> list[int]:
    """The model actors of this test session's Ray (its raylet is a child of this process): never a
    process of another Ray on the machine."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "WatchedEditStage" in command and _descends_from(int(entry.name), os.getpid()):
            pids.append(int(entry.name))
    return pids


def _rerun_resumes(job: Path, ray_cluster: str, kept: dict[str, bytes], rows: int) -> None:
    out = job.parent / "out"
    rerun = CliRunner().invoke(app, ["run", str(job), "--address", ray_cluster])
    assert rerun.exit_code == 0, rerun.output
    summary = json.loads(state_file(out, O.SUMMARY_FILE).read_text())
    assert summary["this_run"]["rows_already_done"] == len(kept)
    assert summary["this_run"]["rows_edited"] == rows - len(kept)
    assert all((out / name).read_bytes() == data for name, data in kept.items())
    ids = read_output(out).column("id").to_pylist()
    assert sorted(ids) == [f"row-{i:02d}" for i in range(rows)]
    assert state_file(out, O.SUCCESS_FILE).exists()


@pytest.mark.slow
def test_an_actor_that_dies_mid_run_loses_no_row_and_duplicates_none(ray_cluster, tiny_model, tmp_path):
    """An actor killed mid-run (the model actors have max_restarts=0). Ray Data 2.60 does one of two
    things, both seen here: it starts a new actor and edits the dead one's rows again (the run exits 0),
    or, when the actor died inside a batch, it fails the run (exit 1, one line, "a rerun resumes") and
    the rerun edits what is missing. Either way the parts committed before the death stay as they were
    and every id ends committed exactly once."""
    rows = 8
    job = _job(tmp_path, tiny_model, rows=rows, params=SLOW_ROWS)
    out, log = tmp_path / "out", tmp_path / "driver.log"
    driver = _start_driver(job, ray_cluster, log)
    try:
        _wait_for_parts(driver, out, log)
        actors = _model_actor_pids()
        assert len(actors) == 1, actors
        kept = _committed(out)
        os.kill(actors[0], signal.SIGKILL)
        driver.wait(timeout=400)
    finally:
        if driver.poll() is None:
            driver.kill()
    output = log.read_text()
    assert driver.returncode in (0, 1), output[-4000:]
    assert len(kept) < rows, "the actor died after the last commit"
    assert all((out / name).read_bytes() == data for name, data in kept.items())
    if driver.returncode == 1:
        errors = error_lines(output)
        assert len(errors) == 1 and errors[0].endswith("; a rerun resumes"), output[-4000:]
        assert not state_file(out, O.SUCCESS_FILE).exists()
        _rerun_resumes(job, ray_cluster, _committed(out), rows)
        return
    summary = json.loads(state_file(out, O.SUMMARY_FILE).read_text())
    assert summary["output"]["ok"] == rows and summary["output"]["duplicates_removed"] == 0
    ids = read_output(out).column("id").to_pylist()
    assert sorted(ids) == [f"row-{i:02d}" for i in range(rows)]
    assert state_file(out, O.SUCCESS_FILE).exists()


@pytest.mark.slow
def test_a_failed_integrity_check_exits_1_and_the_rerun_repairs_it(ray_cluster, tiny_model, tmp_path):
    """A committed part disappears during the run (deleted by hand, a lifecycle rule): at the end an
    input id is missing, so the run exits 1 without summary or _SUCCESS; the rerun edits that row."""
    rows = 6
    job = _job(tmp_path, tiny_model, rows=rows, params=SLOW_ROWS)
    out, log = tmp_path / "out", tmp_path / "driver.log"
    driver = _start_driver(job, ray_cluster, log)
    try:
        _wait_for_parts(driver, out, log)
        lost = next(iter(_committed(out)))
        (out / lost).unlink()
        assert driver.poll() is None, "the run ended before the part was deleted"
        driver.wait(timeout=400)
    finally:
        if driver.poll() is None:
            driver.kill()
    output = log.read_text()
    assert driver.returncode == 1, output[-4000:]
    errors = error_lines(output)
    assert len(errors) == 1, output[-4000:]
    assert errors[0].startswith(f"error: run failed: RuntimeError: integrity check failed for {out}: ")
    assert "1 input id(s) missing" in errors[0] and "0 duplicated" in errors[0]
    assert not state_file(out, O.SUMMARY_FILE).exists() and not state_file(out, O.SUCCESS_FILE).exists()
    kept = _committed(out)
    assert len(kept) == rows - 1
    _rerun_resumes(job, ray_cluster, kept, rows)


# --------------------------------------------------------------------------- moved from test_operations.py


def test_an_unreachable_input_endpoint_is_retryable_exit_1(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    (tmp_path / "job.yaml").write_text(
        "input: {paths: ['s3://bucket/manifests/']}\noutput: {path: out}\nmodel: {source: m}\n"
        # two attempts, short timeouts: what is tested is the class of the error, not the retry budget
        f"storage: {{endpoint_url: 'http://127.0.0.1:{port}', max_attempts: 2, connect_timeout: 1}}\n"
    )
    monkeypatch.chdir(tmp_path)
    for command in ("validate", "run"):
        result = CliRunner().invoke(app, [command, "job.yaml"])
        assert result.exit_code == 1, result.output
        assert "cannot list" in result.output and "EndpointConnectionError" in result.output
    # the same for a model on that endpoint (the input is local and fine)
    write_manifest(tmp_path / "in" / "m.parquet", [{"id": "a", "image_bytes": png_bytes(0), "query": "q"}])
    (tmp_path / "model.yaml").write_text(
        "input: {paths: [in]}\noutput: {path: out}\nmodel: {source: 's3://models/sd'}\n"
        f"storage: {{endpoint_url: 'http://127.0.0.1:{port}', max_attempts: 2, connect_timeout: 1}}\n"
    )
    result = CliRunner().invoke(app, ["validate", "model.yaml"])
    assert result.exit_code == 1, result.output
    assert "error: storage: " in result.output and "model.source s3://models/sd: cannot list" in result.output


def one_row_job(tmp_path: Path, model: Path) -> Path:
    """A job with one row still to edit (so run must connect to Ray)."""
    write_manifest(tmp_path / "in" / "m.parquet", [{"id": "a", "image_bytes": png_bytes(0), "query": "q"}])
    job = tmp_path / "job.yaml"
    job.write_text(f"input: {{paths: [in]}}\noutput: {{path: out}}\nmodel: {{source: '{model}'}}\n")
    return job


def test_a_jobs_api_url_in_ray_address_exits_2(tiny_model, tmp_path):
    """RAY_ADDRESS=http://head:8265 (the Jobs API's URL, which README exported) is a configuration
    error (2), not "a rerun resumes" (1); nothing is written."""
    one_row_job(tmp_path, tiny_model)
    bad = cli("run", "job.yaml", cwd=tmp_path, env={"RAY_ADDRESS": "http://127.0.0.1:8265"})
    assert bad.returncode == 2, bad.stderr[-3000:]
    assert "error: config: Ray address 'http://127.0.0.1:8265' is a Jobs API (dashboard) URL" in bad.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_missing_ray_token_exits_2(ray_cluster, tiny_model, tmp_path):
    one_row_job(tmp_path, tiny_model)
    home = tmp_path / "home"
    home.mkdir()
    env = {"RAY_ADDRESS": ray_cluster, "RAY_AUTH_MODE": "token", "HOME": str(home), "RAY_AUTH_TOKEN": "",
           "RAY_AUTH_TOKEN_PATH": str(home / "none")}  # fmt: skip
    result = cli("run", "job.yaml", cwd=tmp_path, env=env, timeout=240)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "error: config: Ray token authentication" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_sigterm_stops_the_run_cleanly_with_exit_143(ray_cluster, tiny_model, tmp_path):
    """Airflow's execution_timeout sends SIGTERM: Ray shuts down, one line says so, exit 143, no C++
    stack dump; the committed rows stay and a rerun resumes: it edits only the rows not committed and
    leaves the committed parts as they were."""
    write_manifest(
        tmp_path / "manifest" / "part-0.parquet",
        [{"id": f"row-{i:02d}", "image_bytes": png_bytes(i), "caption": "a red circle", "query": "a blue circle"}
         for i in range(12)],
    )  # fmt: skip
    out = tmp_path / "out"
    (tmp_path / "job.yaml").write_text(
        f"input: {{paths: ['{tmp_path / 'manifest'}']}}\noutput: {{path: '{out}', rows_per_file: 1}}\n"
        f"model: {{source: '{tiny_model}'}}\n"
        "params: {num_inference_steps: 40, encode_ratio: 1.0, num_mask_draws: 4}\n"
        "compute: {batch_size: 1, rows_per_block: 1, torch_threads: 1}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
    driver = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", str(tmp_path / "job.yaml")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 400
        while not list(out.glob("part-*.parquet")):
            assert driver.poll() is None, driver.communicate()[1][-3000:]
            assert time.time() < deadline, "no part committed in time"
            time.sleep(0.2)
        sent = time.time()
        driver.send_signal(signal.SIGTERM)
        _, stderr = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    print(f"SIGTERM -> exit {driver.returncode} in {time.time() - sent:.1f} s")
    assert driver.returncode == 143, stderr[-4000:]
    assert "terminated: SIGTERM received; Ray shut down" in stderr
    for noise in ("Stack trace", "*** SIGTERM", "terminate called", "Traceback", "ERROR", "\x1b["):
        assert noise not in stderr, stderr[-4000:]
    assert not state_file(out, O.SUCCESS_FILE).exists()
    kept = {p.name: p.read_bytes() for p in out.glob("part-*.parquet")}
    assert 1 <= len(kept) < 12
    first_run = json.loads(state_file(out, O.JOB_FILE).read_text())["run_id"]

    # the retry (Airflow's, cron's next night): resumes
    rerun = CliRunner().invoke(app, ["run", str(tmp_path / "job.yaml"), "--address", ray_cluster])
    assert rerun.exit_code == 0, rerun.output
    summary = json.loads(state_file(out, O.SUMMARY_FILE).read_text())
    assert summary["this_run"]["rows_already_done"] == len(kept)
    assert summary["this_run"]["rows_edited"] == 12 - len(kept)
    assert all((out / name).read_bytes() == data for name, data in kept.items())
    table = read_output(out)
    assert sorted(table.column("id").to_pylist()) == [f"row-{i:02d}" for i in range(12)]
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert table.column("run_id").to_pylist().count(first_run) == len(kept)
    assert state_file(out, O.SUCCESS_FILE).exists()

"""The unattended path (issue 9): the CLI as cron and Airflow run it, as real subprocesses where the
process itself is what is tested (exit codes, exit-time aborts, signals, logs), the results identity
shared by validate and run, the output folder as readers see it, and the installed wheel."""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from pipeline_testing import FAST_PARAMS, REPO, png_bytes, read_output, write_manifest
from typer.testing import CliRunner

from pipeline import output as O
from pipeline import rows as R
from pipeline.cli import app
from pipeline.config import load_job
from pipeline.identity import ModelSource, identity_difference, results_hash, results_identity
from pipeline.storage import parquet_bytes

ROWS = 4


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m pipeline.cli ARGS`` as a subprocess (stdout and stderr captured: not a TTY); an
    ``env`` value of None removes that variable."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def make_checkout(root: Path, model: Path, rows: int = ROWS) -> Path:
    """A directory laid out like the repository: jobs/, the model at models/shapes-v3, a manifest."""
    root.mkdir(parents=True)
    shutil.copytree(REPO / "jobs", root / "jobs")
    shutil.copytree(model, root / "models" / "shapes-v3")
    result = CliRunner().invoke(app, ["prepare", "shapes", "--out", str(root / "data" / "shapes_manifest"),
                                      "--rows", str(rows)])  # fmt: skip
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="module")
def finished(ray_cluster, tiny_model, tmp_path_factory) -> Path:
    """A checkout whose demo job has run to completion (on the session's Ray)."""
    root = make_checkout(tmp_path_factory.mktemp("finished") / "checkout", tiny_model)
    previous = os.getcwd()
    os.chdir(root)
    try:
        result = CliRunner().invoke(app, ["run", "jobs/shapes_recolor.yaml", "--address", ray_cluster])
    finally:
        os.chdir(previous)
    assert result.exit_code == 0, result.output
    return root


def snapshot(out: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in out.rglob("*")
        if p.is_file()
    }


# --------------------------------------------------------------------------- 1. no Python file objects


PYARROW_READERS = {
    "read_table",
    "read_schema",
    "read_metadata",
    "ParquetFile",
    "write_table",
    "ParquetWriter",
}


def python_file_objects_given_to_pyarrow(source: str) -> list[int]:
    """Lines where a pyarrow reader/writer gets a Python file object: a name bound by
    ``with <x>.open(...) as name`` / ``with open(...) as name`` / ``name = io.BytesIO()``, or such a call
    inline."""

    def is_file_call(node: ast.AST) -> bool:
        if not isinstance(node, ast.Call):
            return False
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        return name in ("open", "BytesIO")

    tree = ast.parse(source)
    handles: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.With):
            for item in node.items:
                if is_file_call(item.context_expr) and isinstance(item.optional_vars, ast.Name):
                    handles.add(item.optional_vars.id)
        if isinstance(node, ast.Assign) and is_file_call(node.value):
            handles.update(t.id for t in node.targets if isinstance(t, ast.Name))
    bad = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        position = 1 if node.func.attr == "write_table" else 0  # write_table(table, where)
        if node.func.attr not in PYARROW_READERS or len(node.args) <= position:
            continue
        where = node.args[position]
        if is_file_call(where) or (isinstance(where, ast.Name) and where.id in handles):
            bad.append(node.lineno)
    return bad


def test_the_checker_finds_file_objects():
    assert python_file_objects_given_to_pyarrow(
        "with fs.open(p, 'rb') as f:\n    t = pq.read_table(f)\n"
    ) == [2]
    assert python_file_objects_given_to_pyarrow("pq.ParquetFile(open(p, 'rb'))\n") == [1]
    assert python_file_objects_given_to_pyarrow("b = io.BytesIO()\npq.write_table(t, b)\n") == [2]
    assert python_file_objects_given_to_pyarrow("pq.read_table(p, filesystem=fs)\n") == []


def test_no_python_file_object_is_handed_to_pyarrow_anywhere():
    offenders = {}
    for folder in ("pipeline", "diffedit", "benchmarks", "tests"):
        for path in sorted((REPO / folder).rglob("*.py")):
            lines = python_file_objects_given_to_pyarrow(path.read_text())
            if lines:
                offenders[str(path.relative_to(REPO))] = lines
    assert offenders == {}


@pytest.mark.slow
def test_validate_and_the_nightly_noop_run_exit_0_thirty_times_each(finished):
    """The exit-time abort (exit 134, ``terminate called without an active exception``) came from
    Parquet read through Python file objects: 30 real processes of each command, every one exit 0."""
    codes: dict[str, list[int]] = {"validate": [], "run": []}
    started = time.time()
    for _ in range(30):
        for command in ("validate", "run"):
            result = cli(command, "jobs/shapes_recolor.yaml", cwd=finished, env={"RAY_ADDRESS": ""})
            codes[command].append(result.returncode)
            assert result.returncode == 0, (
                command,
                result.returncode,
                result.stdout[-2000:],
                result.stderr[-3000:],
            )
            assert "terminate called" not in result.stderr
            expected = "a run is a no-op" if command == "validate" else "already complete"
            assert expected in result.stdout
            assert "Started a local Ray" not in result.stderr  # the no-op starts no Ray
    print(f"30 validate + 30 no-op run: exit codes {set(codes['validate'])}, {set(codes['run'])}; "
          f"{(time.time() - started) / 60:.1f} s per process")  # fmt: skip


# --------------------------------------------------------------------------- 2 + 3. results identity


def test_validate_agrees_with_run_on_a_finished_output(finished, monkeypatch):
    monkeypatch.chdir(finished)
    checked = CliRunner().invoke(app, ["validate", "jobs/shapes_recolor.yaml"])
    assert checked.exit_code == 0, checked.output
    assert "complete (4 rows, _SUCCESS present: a run is a no-op)" in checked.output
    assert "another configuration" not in checked.output
    ran = CliRunner().invoke(app, ["run", "jobs/shapes_recolor.yaml"])
    assert ran.exit_code == 0 and "already complete" in ran.output
    job = json.loads((finished / "out" / "shapes_recolor" / O.JOB_FILE).read_text())
    assert job["results_hash"][:16] in checked.output  # the hash validate computed is the one run wrote


def test_the_model_column_shows_the_source_as_written(finished):
    table = read_output(finished / "out" / "shapes_recolor")
    assert table.column("model").to_pylist() == ["models/shapes-v3"] * ROWS
    summary = json.loads((finished / "out" / "shapes_recolor" / O.SUMMARY_FILE).read_text())
    assert summary["model"] == "models/shapes-v3"


def test_another_checkout_with_the_model_moved_resumes_the_same_output(finished, tmp_path, monkeypatch):
    """Redeploy to another directory, move the model, point at the first checkout's output: no-op."""
    other = tmp_path / "redeployed"
    shutil.copytree(finished, other, ignore=shutil.ignore_patterns("out"))
    (other / "models" / "shapes-v3").rename(other / "models" / "moved")
    out = finished / "out" / "shapes_recolor"
    (other / "jobs" / "moved.yaml").write_text(
        "name: shapes_recolor\npresets: [models/shapes-v3, compute/cpu]\n"
        "input: {paths: [data/shapes_manifest]}\n"
        f"output: {{path: '{out}', rows_per_file: 8}}\nmodel: {{source: models/moved}}\n"
        "failure: {max_failed_fraction: 0.0}\n"
    )
    before = snapshot(out)
    monkeypatch.chdir(other)
    checked = CliRunner().invoke(app, ["validate", "jobs/moved.yaml"])
    assert checked.exit_code == 0, checked.output
    assert "a run is a no-op" in checked.output
    ran = CliRunner().invoke(app, ["run", "jobs/moved.yaml"])
    assert ran.exit_code == 0, ran.output
    assert "already complete" in ran.output
    assert snapshot(out) == before  # nothing rewritten

    changed = (other / "jobs" / "moved.yaml").read_text() + "params: {guidance_scale: 3.0}\n"
    (other / "jobs" / "changed.yaml").write_text(changed)
    refused = CliRunner().invoke(app, ["validate", "jobs/changed.yaml"])
    assert refused.exit_code == 3
    assert "another configuration" in refused.output and "differs in: params" in refused.output
    refused_run = CliRunner().invoke(app, ["run", "jobs/changed.yaml"])
    assert refused_run.exit_code == 3 and "differs in: params" in refused_run.output
    assert snapshot(out) == before


def test_the_results_identity_is_what_determines_the_pixels(tmp_path):
    base = "input: {paths: [in]}\noutput: {path: out}\nmodel: {source: m}\n"

    def job(extra: str = "", name: str = "a.yaml", start: str = base):
        (tmp_path / name).write_text(start + extra)
        return load_job(tmp_path / name, env={})

    model = ModelSource("local", "/m", None, {"kind": "files", "weights_sha256": "a" * 64}, "")
    other_weights = ModelSource("local", "/m", None, {"kind": "files", "weights_sha256": "b" * 64}, "")
    moved = ModelSource("local", "/elsewhere/m", None, model.fingerprint, "")
    key = results_identity(job(), model)
    same = [
        results_identity(job(), moved),  # the model's location
        results_identity(
            job("", "b.yaml", "input: {paths: [/x/in]}\noutput: {path: /y/out}\nmodel: {source: m}\n"), model
        ),
        results_identity(
            job("compute: {actors: 1, batch_size: 1, max_batch: 2, torch_threads: 1}\n", "c.yaml"), model
        ),
        results_identity(
            job("images: {allow: ['s3://bucket/']}\nfailure: {max_failed_fraction: 0.5}\n", "d.yaml"), model
        ),
        results_identity(job("name: other\n", "e.yaml"), model),
    ]
    assert all(results_hash(s) == results_hash(key) for s in same)
    different = {
        "model": results_identity(job(), other_weights),
        "params": results_identity(job("params: {encode_ratio: 0.5}\n", "f.yaml"), model),
        "images": results_identity(job("images: {max_side: 512}\n", "g.yaml"), model),
        "compute": results_identity(job("compute: {dtype: bfloat16}\n", "h.yaml"), model),
    }
    for what, identity in different.items():
        assert results_hash(identity) != results_hash(key)
        assert identity_difference(key, identity) == what
    assert "results_version" in key and "/m" not in json.dumps(key)


# --------------------------------------------------------------------------- 5. preflight


def test_run_refuses_a_missing_model_before_starting_ray_or_writing(tmp_path):
    root = tmp_path / "checkout"
    root.mkdir()
    shutil.copytree(REPO / "jobs", root / "jobs")
    write_manifest(root / "data" / "shapes_manifest" / "m.parquet",
                   [{"id": "a", "image_bytes": png_bytes(0), "query": "q"}])  # fmt: skip
    for command in ("validate", "run"):
        result = cli(command, "jobs/shapes_recolor.yaml", cwd=root, env={"RAY_ADDRESS": ""})
        assert result.returncode == 2, (command, result.stdout, result.stderr[-3000:])
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(errors) == 1, result.stderr  # one clear line, no traceback
        assert errors[0].startswith("error: config: ") and "model.source" in errors[0]
        assert f"{root}/models/shapes-v3: no such directory" in errors[0]
        assert "hf://org/name" in errors[0]  # how a hub repository is written instead
        assert "Ray" not in result.stderr
    assert not (root / "out").exists()  # nothing written to the output


def test_a_relative_model_path_is_never_taken_as_a_hub_id(tiny_model, tmp_path, monkeypatch):
    """models/shapes-v3 has the form of a hub id (org/name): from another directory it is a missing
    directory (exit 2), never a hub download."""
    checkout = make_checkout(tmp_path / "checkout", tiny_model, rows=2)
    job = checkout / "jobs" / "absolute_io.yaml"
    job.write_text(
        "presets: [models/shapes-v3, compute/cpu]\n"
        f"input: {{paths: ['{checkout / 'data' / 'shapes_manifest'}']}}\noutput: {{path: '{checkout / 'out'}'}}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the job file by absolute path, from another directory
    for command in ("validate", "run"):
        result = CliRunner().invoke(app, [command, str(job)])
        assert result.exit_code == 2, result.output
        assert f"{elsewhere}/models/shapes-v3: no such directory" in result.output
    monkeypatch.chdir(checkout)
    assert CliRunner().invoke(app, ["validate", str(job)]).exit_code == 0


def test_a_hub_repository_without_a_hub_is_a_configuration_error(tmp_path, monkeypatch):
    write_manifest(tmp_path / "in" / "m.parquet", [{"id": "a", "image_bytes": png_bytes(0), "query": "q"}])
    (tmp_path / "job.yaml").write_text(
        "input: {paths: [in]}\noutput: {path: out}\nmodel: {source: 'hf://someorg/somemodel'}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(app, ["run", "job.yaml"])
    assert result.exit_code == 2, result.output
    assert "cannot resolve someorg/somemodel: HF_HUB_OFFLINE=1" in result.output
    assert "no cached snapshot" in result.output
    monkeypatch.delenv("HF_HUB_OFFLINE")  # asked, the hub is unreachable here (or has no such repository)
    result = CliRunner().invoke(app, ["run", "job.yaml"])
    assert result.exit_code == 2, result.output
    assert "cannot resolve someorg/somemodel: asking the hub failed" in result.output
    assert not (tmp_path / "out").exists()


def test_a_hub_repository_is_pinned_to_the_commit_of_its_cached_snapshot(
    ray_cluster, tiny_model, tmp_path, monkeypatch
):
    """Offline, hf://org/name resolves through the local snapshot cache: the identity is the commit,
    the actors load that commit, and the model column shows hf://org/name."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "models--someorg--tiny-sd"
    shutil.copytree(tiny_model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    write_manifest(tmp_path / "in" / "m.parquet", [{"id": "a", "image_bytes": png_bytes(0), "query": "q"}])
    params = ", ".join(f"{k}: {v}" for k, v in FAST_PARAMS.items())
    (tmp_path / "job.yaml").write_text(
        "input: {paths: [in]}\noutput: {path: out}\nmodel: {source: 'hf://someorg/tiny-sd', cache_dir: hf}\n"
        f"params: {{{params}}}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checked = CliRunner().invoke(app, ["validate", "job.yaml"])
    assert checked.exit_code == 0, checked.output
    assert (
        f"hub repository someorg/tiny-sd at commit {commit[:12]}: Stable Diffusion layout OK"
        in checked.output
    )
    ran = CliRunner().invoke(app, ["run", "job.yaml", "--address", ray_cluster])
    assert ran.exit_code == 0, ran.output
    identity = json.loads((tmp_path / "out" / O.JOB_FILE).read_text())["results_identity"]
    assert identity["model"] == {"kind": "hub", "repo": "someorg/tiny-sd", "commit": commit}
    row = read_output(tmp_path / "out").to_pylist()[0]
    assert row["status"] == "ok" and row["model"] == "hf://someorg/tiny-sd"


# --------------------------------------------------------------------------- 6. exit codes


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
def test_sigterm_stops_the_run_cleanly_with_exit_143(tiny_model, tmp_path):
    """Airflow's execution_timeout sends SIGTERM: Ray shuts down, one line says so, exit 143, no C++
    stack dump; the committed rows stay and a rerun resumes."""
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
    assert not (out / O.SUCCESS_FILE).exists()
    assert 1 <= len(list(out.glob("part-*.parquet"))) < 12


# --------------------------------------------------------------------------- 7. wheel and CLI surface


def test_cli_surface_version_quiet_after_the_command_and_flag_help(finished, monkeypatch, tmp_path):
    runner = CliRunner()
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.startswith("diffedit-batch ")
    monkeypatch.chdir(finished)
    quiet = runner.invoke(app, ["validate", "jobs/shapes_recolor.yaml", "-q"])
    assert quiet.exit_code == 0, quiet.output
    assert runner.invoke(app, ["run", "jobs/shapes_recolor.yaml", "--quiet", "-v"]).exit_code == 0
    for command in ("run", "validate", "preview"):
        shown = runner.invoke(app, [command, "--help"], env={"COLUMNS": "120"})
        assert shown.exit_code == 0 and "<bool>" not in shown.output, shown.output
    monkeypatch.setenv("DIFFEDIT_CONFIGS", str(tmp_path / "no-presets"))
    missing = runner.invoke(app, ["validate", "jobs/shapes_recolor.yaml"])
    assert missing.exit_code == 2 and "$DIFFEDIT_CONFIGS" in missing.output


@pytest.mark.slow
def test_the_installed_wheel_validates_the_demo_job(tmp_path):
    """``pip install .`` (a wheel, into a fresh venv that sees the shared dependencies through a .pth
    file) then ``diffedit-batch validate jobs/shapes_recolor.yaml`` from a checkout."""
    wheels = tmp_path / "wheels"
    src = tmp_path / "src"  # a clean copy: the build must not depend on the working tree's leftovers
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "out", "data", "build", "*.egg-info",
                                                            "__pycache__", ".pytest_cache"), symlinks=True)  # fmt: skip
    import importlib.util

    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(wheels), str(src)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python*/site-packages"))
    shared = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "pyarrow").is_dir())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DIFFEDIT_CONFIGS")}
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps",
         str(next(wheels.glob("*.whl")))], capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    # the dependencies from the shared environment, after the install (pip would otherwise see its
    # editable diffedit-batch as already installed): a plain path line, so no editable finder runs
    (site / "shared_dependencies.pth").write_text(shared + "\n")

    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "jobs", checkout / "jobs")
    shutil.copytree(REPO / "models" / "shapes-v3", checkout / "models" / "shapes-v3")
    exe = str(venv / "bin" / "diffedit-batch")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [exe, *args], cwd=checkout, env=env, capture_output=True, text=True, timeout=300
        )

    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import pipeline; print(pipeline.__file__)"],
                           cwd=checkout, env=env, capture_output=True, text=True)  # fmt: skip
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr
    assert run("--version").stdout.strip() == "diffedit-batch 0.1.0"
    assert run("prepare", "shapes", "--out", "data/shapes_manifest", "--rows", "3").returncode == 0
    checked = run("validate", "jobs/shapes_recolor.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Stable Diffusion layout OK" in checked.stdout and checked.stdout.strip().endswith("valid")


# --------------------------------------------------------------------------- 9. readers


def test_readers_see_only_the_committed_parts(tmp_path):
    """During a run, after a kill or after success: datasets (data_files='<out>/*', data_dir, the folder
    itself), pyarrow.dataset, pandas and DuckDB (when installed) read exactly the committed rows."""
    import fsspec

    fs = fsspec.filesystem("file")
    out = str(tmp_path / "out")

    def table(ids):
        return R.table_from_rows([{"id": i, "status": R.OK, "run_id": "r"} for i in ids], R.OUTPUT_SCHEMA)

    O.write_json_atomic(fs, f"{out}/{O.JOB_FILE}", {"run_id": "r"})
    O.commit_table(fs, out, table(["a", "b"]), run_id="r")
    O.commit_table(fs, out, table(["c"]), run_id="r")
    # a write in flight (or left by a kill): a complete Parquet file under its staging name
    staged = f"{out}/{O.STAGING}/{O.part_name(['x', 'y'])}.0123abcd.tmp"
    fs.pipe(staged, parquet_bytes(table(["x", "y"]).cast(R.output_schema_with_metadata())))
    assert fs.exists(staged)

    def check(state: str) -> None:
        import pandas
        import pyarrow.dataset as pads

        datasets = pytest.importorskip("datasets")
        seen = {
            "pyarrow.dataset": pads.dataset(out, format="parquet").to_table().column("id").to_pylist(),
            "pandas": list(pandas.read_parquet(out)["id"]),
        }
        cache = str(tmp_path / f"hf-{state}")
        for name, kwargs in {
            "datasets data_files=*": {"path": "parquet", "data_files": f"{out}/*"},
            "datasets data_dir": {"path": "parquet", "data_dir": out},
            "datasets folder": {"path": out},
        }.items():
            seen[name] = datasets.load_dataset(**kwargs, split="train", cache_dir=cache)["id"]
        try:
            import duckdb

            seen["duckdb"] = [
                r[0] for r in duckdb.sql(f"select id from read_parquet('{out}/**/*.parquet')").fetchall()
            ]
        except ImportError:
            pass
        for reader, ids in seen.items():
            assert sorted(ids) == ["a", "b", "c"], (state, reader, ids)

    check("running")
    O.write_json_atomic(fs, f"{out}/{O.SUMMARY_FILE}", {"status": "succeeded"})
    O.write_bytes_atomic(fs, f"{out}/{O.SUCCESS_FILE}", b"r\n")
    check("succeeded")
    assert sorted(os.listdir(out)) == sorted([".diffedit", O.part_name(["a", "b"]), O.part_name(["c"])])


def test_rows_per_file_is_the_part_size(ray_cluster, tiny_model, tmp_path, monkeypatch):
    """7 rows, blocks of 2, one row per model call, rows_per_file 3: parts of 3, 3 and 1 rows."""
    write_manifest(tmp_path / "in" / "m.parquet",
                   [{"id": f"r{i}", "image_bytes": png_bytes(i), "query": "a blue circle"} for i in range(7)])  # fmt: skip
    params = ", ".join(f"{k}: {v}" for k, v in FAST_PARAMS.items())
    (tmp_path / "job.yaml").write_text(
        f"input: {{paths: [in]}}\noutput: {{path: out, rows_per_file: 3}}\nmodel: {{source: '{tiny_model}'}}\n"
        f"params: {{{params}}}\ncompute: {{batch_size: 1, rows_per_block: 2, torch_threads: 1}}\n"
    )
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", "job.yaml", "--address", ray_cluster])
    assert result.exit_code == 0, result.output
    sizes = sorted(pa.parquet.read_metadata(p).num_rows for p in (tmp_path / "out").glob("part-*.parquet"))
    assert sizes == [1, 3, 3]


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

"""examples/airflow_dag.py on real Airflow 2.11 and 3.3 (issue 9, item 8), each in a throwaway venv
(tests/ops/airflow_venvs.sh; ~/.cache/diffedit-airflow, or $DIFFEDIT_AIRFLOW_VENVS): the DAG imports
into a DagBag without errors; both versions put the run that starts at 02:00 on day D on partition
D-1; exit code 1 is retried while 2/3/4 fail at once; `airflow dags test` runs validate then run on
the shapes job (tiny model, 2 rows), and a job with a configuration error fails without a retry.
~6 minutes on 2 cores once the venvs exist."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
VENVS = Path(os.environ.get("DIFFEDIT_AIRFLOW_VENVS", Path.home() / ".cache" / "diffedit-airflow"))
VERSIONS = {"2": "2.11", "3": "3.3"}


@pytest.fixture(scope="module")
def venvs() -> Path:
    missing = [v for v in VERSIONS if not (VENVS / f"af{v}" / "bin" / "airflow").exists()]
    if missing:  # slow once (pip), then reused
        subprocess.run(["sh", str(HERE / "airflow_venvs.sh"), str(VENVS)], check=True, timeout=3000)
    return VENVS


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Path:
    """A deployment directory: the CLI (a wrapper running this checkout), a manifest, a tiny model
    and two job files, one with a configuration error."""
    from diffedit.tiny import save_tiny_model
    from pipeline.config import StorageConfig
    from pipeline.prepare import SHAPES_SCHEMA, shapes_rows, write_manifest

    app = tmp_path_factory.mktemp("deploy")
    model = save_tiny_model(app / "tiny")
    write_manifest(shapes_rows(2, seed=0, size=32), str(app / "manifest"), StorageConfig(), SHAPES_SCHEMA)
    job = (
        "name: shapes_airflow\ninput: {paths: [manifest]}\noutput: {path: 'out/ds=${DS}'}\n"
        f"model: {{source: {model}}}\nparams: {{num_inference_steps: 4, num_mask_draws: 2}}\n"
        "compute: {actors: 1, cpus_per_actor: 0.5}\n"
    )
    (app / "job.yaml").write_text(job)
    (app / "broken.yaml").write_text(job.replace("actors: 1,", "actor: 1,"))
    cli = app / "diffedit-batch"
    cli.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m pipeline.cli "$@"\n')
    stub = app / "exit-with"
    stub.write_text('#!/bin/sh\necho "stand-in CLI: $*"\nfor last; do :; done\nexit "$last"\n')
    for f in (cli, stub):
        f.chmod(0o755)
    return app


def airflow_env(home: Path, app: Path, job: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHON", "RAY_"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        DIFFEDIT_HOME=str(app),
        DIFFEDIT_CLI=str(app / "diffedit-batch"),
        DIFFEDIT_JOB=job,
        RAY_ADDRESS="",  # a local Ray on this machine
        RAY_DATA_DISABLE_PROGRESS_BARS="1",
    )
    return env


@pytest.fixture(scope="module", params=sorted(VERSIONS))
def airflow(request, venvs, app, tmp_path_factory) -> dict:
    version = request.param
    home = tmp_path_factory.mktemp(f"airflow{version}")
    (home / "dags").mkdir()
    shutil.copy(ROOT / "examples" / "airflow_dag.py", home / "dags" / "airflow_dag.py")
    bin_ = venvs / f"af{version}" / "bin"
    env = airflow_env(home, app, "job.yaml")
    subprocess.run(
        [str(bin_ / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True, timeout=600
    )
    return {"version": version, "bin": bin_, "home": home, "env": env}


def test_the_dag_imports_and_means_the_same_partition_on_both_versions(airflow, app):
    out = subprocess.run(
        [str(airflow["bin"] / "python"), str(HERE / "airflow_check.py"), str(airflow["home"] / "dags"),
         str(app / "exit-with")],
        env=airflow["env"], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["import_errors"] == {}
    assert result["timetable"] == "CronDataIntervalTimetable"
    # Before: Airflow 3's @daily (CronTriggerTimetable) made the run of 2024-06-02 write 2024-06-02.
    assert result["first_run_after"].startswith("2024-06-02T02:00:00")
    assert result["first_partition"] == "2024-06-01"
    assert result["tasks"]["run"]["upstream"] == ["validate"]
    assert result["tasks"]["run"]["retries"] == 2 and result["tasks"]["validate"]["retries"] == 2
    assert result["max_active_runs"] == 1  # one writer per partition
    assert result["tasks"]["run"]["execution_timeout_s"] == 10 * 3600
    outcomes = result["outcomes"]
    assert outcomes["0"] == "success"
    for code in ("1", "137"):  # the run failed or was killed: retried (an ordinary error)
        assert outcomes[code].startswith("builtins.RuntimeError:") and "a retry resumes" in outcomes[code]
    for code in ("2", "3", "4"):  # a retry would end the same way: AirflowFailException, no retry
        assert "AirflowFailException" in outcomes[code] and f"exited {code}" in outcomes[code]


def test_airflow_dags_test_runs_validate_then_run_on_the_shapes_job(airflow, app):
    logical = "2024-06-03T02:00:00+00:00" if airflow["version"] == "3" else "2024-06-02T02:00:00+00:00"
    partition = "2024-06-02" if airflow["version"] == "3" else "2024-06-01"
    out = subprocess.run(
        [str(airflow["bin"] / "airflow"), "dags", "test", "diffedit_coco_recolor", logical],
        env=airflow["env"], capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-5000:]
    validate_at = log.index(f"DS={partition}: {app / 'diffedit-batch'} validate job.yaml")
    run_at = log.index(f"DS={partition}: {app / 'diffedit-batch'} run job.yaml")
    assert validate_at < log.index("valid", validate_at) < run_at
    assert f"succeeded: 2 ok, 0 failed, in out/ds={partition}" in log  # the output as the job writes it
    assert (app / "out" / f".ds={partition}.diffedit" / "_SUCCESS").exists()


def test_a_configuration_error_fails_the_dag_run_without_a_retry(airflow, app, tmp_path):
    env = {**airflow["env"], "DIFFEDIT_JOB": "broken.yaml"}
    out = subprocess.run(
        [str(airflow["bin"] / "airflow"), "dags", "test", "diffedit_coco_recolor", "2024-07-02T02:00:00+00:00"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    log = out.stdout + out.stderr
    assert "unknown key(s) ['actor']" in log
    assert "validate for DS=2024-07-01 exited 2 (configuration error)" in log
    assert "up_for_retry" not in log.lower()  # failed at once (retries: 2 would otherwise apply)
    assert "run job.yaml" not in log and "run broken.yaml" not in log  # run never started
    assert not (app / "out" / "ds=2024-07-01").exists()

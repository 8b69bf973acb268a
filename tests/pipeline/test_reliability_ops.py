"""Issue 20, item 11: the Airflow task's message on a configuration error (no summary.json to point
to; the CLI's error line logged at ERROR), no ANSI colour codes in a file log when Ray connects to a
cluster, and what ``ray job submit --working-dir .`` uploads (.rayignore)."""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
from pathlib import Path

import pytest
from pipeline_testing import REPO


class AirflowFailException(Exception):
    pass


@pytest.fixture
def dag_module(tmp_path, monkeypatch):
    """examples/airflow_dag.py loaded against stand-in Airflow modules, its CLI a script that prints
    what the real CLI prints on a configuration error and exits with the code in $CODE."""
    airflow = types.ModuleType("airflow")
    sdk = types.ModuleType("airflow.sdk")

    class DAG:
        def __init__(self, *a, **k): ...
        def __enter__(self): return self  # fmt: skip

        def __exit__(self, *exc): return False  # fmt: skip

    class Task:  # @task: calling the task only builds the graph
        def __init__(self, fn=None): ...
        def __call__(self, *a, **k): return self  # fmt: skip

        def __rshift__(self, other): return other  # fmt: skip

    sdk.DAG = DAG
    sdk.task = lambda *a, **k: Task(a[0]) if a and callable(a[0]) else Task
    exceptions = types.ModuleType("airflow.sdk.exceptions")
    exceptions.AirflowFailException = AirflowFailException
    interval = types.ModuleType("airflow.timetables.interval")
    interval.CronDataIntervalTimetable = lambda *a, **k: None
    for name, module in {"airflow": airflow, "airflow.sdk": sdk, "airflow.sdk.exceptions": exceptions,
                         "airflow.timetables": types.ModuleType("airflow.timetables"),
                         "airflow.timetables.interval": interval}.items():  # fmt: skip
        monkeypatch.setitem(sys.modules, name, module)
    cli = tmp_path / "cli"
    cli.write_text(
        "#!/bin/sh\necho 'config jobs/x.yaml: OK'\n"
        'echo "error: config: jobs/x.yaml: output: duplicate key (line 5; first at line 2)" >&2\nexit $CODE\n'
    )
    cli.chmod(0o755)
    monkeypatch.setenv("DIFFEDIT_CLI", str(cli))
    monkeypatch.setenv("DIFFEDIT_HOME", str(tmp_path))
    spec = importlib.util.spec_from_file_location(
        "airflow_dag_under_test", REPO / "examples" / "airflow_dag.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_configuration_error_fails_the_task_with_the_clis_reason(dag_module, monkeypatch, caplog):
    from datetime import datetime

    monkeypatch.setenv("CODE", "2")
    with caplog.at_level(logging.INFO), pytest.raises(AirflowFailException) as info:
        dag_module.diffedit_batch("validate", datetime(2024, 6, 1))
    message = str(info.value)
    assert "exited 2 (configuration error): config: jobs/x.yaml: output: duplicate key" in message
    assert "summary.json" not in message  # nothing was run: there is no summary to read
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "error: config: jobs/x.yaml: output: duplicate key (line 5; first at line 2)"
    ]
    monkeypatch.setenv("CODE", "4")  # a finished run with too many failed rows: its summary exists
    with pytest.raises(
        AirflowFailException,
        match=r"see summary\.json in the output's state folder \(\.<name>\.diffedit/ beside it\)",
    ):
        dag_module.diffedit_batch("run", datetime(2024, 6, 1))
    monkeypatch.setenv("CODE", "1")
    with pytest.raises(RuntimeError, match=r"exited 1: config: .*; a retry resumes"):
        dag_module.diffedit_batch("run", datetime(2024, 6, 1))


def test_rays_coloured_dashboard_line_reaches_a_file_log_without_ansi_codes(tmp_path):
    from pipeline.job import _NO_ANSI

    logger = logging.getLogger("ray._private.worker")
    logger.addFilter(_NO_ANSI)
    path = tmp_path / "driver.log"
    handler = logging.FileHandler(path)
    logger.addHandler(handler)
    try:
        logger.warning("Connected to Ray cluster. View the dashboard at %s%s%s %s%s",
                       "\x1b[1m", "\x1b[32m", "http://127.0.0.1:8265", "\x1b[39m", "\x1b[22m")  # fmt: skip
    finally:
        logger.removeHandler(handler)
        handler.close()
    text = path.read_text()
    assert "\x1b" not in text
    assert "View the dashboard at http://127.0.0.1:8265" in text


def test_ray_job_submit_uploads_neither_build_outputs_nor_the_old_model(tmp_path):
    from ray._private.runtime_env.packaging import _dir_travel

    root = tmp_path / "checkout"
    root.mkdir()
    for name in (".gitignore", ".rayignore"):
        (root / name).write_text((REPO / name).read_text())
    files = ["pipeline/job.py", "models/shapes-v3/model_index.json", "jobs/shapes_recolor.yaml",
             "build/lib/pipeline/job.py", "dist/x.whl", "preview.png", "models/shapes-v2/model_index.json",
             "models/shapes-v3-flow/model_index.json",
             "out/x/part-1.parquet", "data/m.parquet", ".venv/bin/python"]  # fmt: skip
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x")
    (root / "pipeline" / "models").symlink_to("../models", target_is_directory=True)
    uploaded: set[str] = set()
    _dir_travel(
        root, [], lambda p: uploaded.add(Path(p).relative_to(root).as_posix()), include_gitignore=True
    )
    uploaded = {f for f in uploaded if (root / f).is_file() and not f.startswith(".")}
    assert uploaded == {"pipeline/job.py", "models/shapes-v3/model_index.json", "jobs/shapes_recolor.yaml"}

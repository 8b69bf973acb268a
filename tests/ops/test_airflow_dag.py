"""examples/airflow_dag.py without Airflow (the default suite; tests/ops/test_airflow.py runs it on
real Airflow 2 and 3, slow): the DAG allows one active run (one writer per partition), the run task has
an execution_timeout, and when a task is stopped (the timeout's exception, Airflow 2's SIGALRM, or the
SIGTERM Airflow 3's supervisor sends) the DAG's task function passes SIGTERM on to the CLI and waits
for it, so the CLI shuts Ray down and exits 143 (a retry resumes)."""

from __future__ import annotations

import ast
import logging
import os
import shlex
import signal
import subprocess
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

DAG_FILE = Path(__file__).resolve().parents[2] / "examples" / "airflow_dag.py"


def _tree() -> ast.Module:
    return ast.parse(DAG_FILE.read_text())


def _keywords(call: ast.Call) -> dict[str, Any]:
    return {k.arg: k.value for k in call.keywords if k.arg}


def test_the_dag_allows_one_active_run_and_bounds_the_run_task():
    calls = [n for n in ast.walk(_tree()) if isinstance(n, ast.Call)]
    dags = [c for c in calls if isinstance(c.func, ast.Name) and c.func.id == "DAG"]
    assert len(dags) == 1
    options = _keywords(dags[0])
    assert ast.literal_eval(options["max_active_runs"]) == 1  # one writer per output partition
    assert ast.literal_eval(options["catchup"]) is False
    tasks = {
        f.name: f
        for f in ast.walk(_tree())
        if isinstance(f, ast.FunctionDef) and f.name in ("validate", "run")
    }
    decorator = tasks["run"].decorator_list[0]
    assert isinstance(decorator, ast.Call) and decorator.func.id == "task"
    timeout = _keywords(decorator)["execution_timeout"]
    assert ast.unparse(timeout) == "timedelta(hours=10)"


class Stopped(Exception):
    """What Airflow raises in a task it stops (AirflowTaskTimeout, AirflowTaskTerminated)."""


def _task_function(cli: list[str], home: Path):
    """``diffedit_batch`` as the DAG file defines it (its source, executed), with a stand-in CLI."""
    source = DAG_FILE.read_text()
    node = next(n for n in _tree().body if isinstance(n, ast.FunctionDef) and n.name == "diffedit_batch")
    namespace = {
        "datetime": datetime, "log": logging.getLogger("dag"), "os": os, "shlex": shlex, "signal": signal,
        "subprocess": subprocess, "CLI": cli, "JOB": "job.yaml", "HOME": str(home), "ENV": {},
        "FINAL": {2: "configuration error"}, "AirflowFailException": RuntimeError,
    }  # fmt: skip
    exec(compile(ast.get_source_segment(source, node), str(DAG_FILE), "exec"), namespace)
    return namespace["diffedit_batch"]


def _raise_stopped(signum, frame):
    raise Stopped(signal.Signals(signum).name)


@pytest.mark.parametrize("how", ["SIGALRM", "SIGTERM"])
def test_a_stopped_task_sends_sigterm_to_the_cli_and_waits_for_it(how, tmp_path):
    """Airflow 2's execution_timeout is a SIGALRM whose handler raises in the task; Airflow 3's
    supervisor sends the task process SIGTERM, whose handler raises. Either way the CLI gets SIGTERM."""
    record = tmp_path / "cli.out"
    stub = tmp_path / "cli"
    stub.write_text(
        "#!/bin/sh\n"
        f"echo $$ > {record}.pid\n"
        f"trap 'echo SIGTERM >> {record}; exit 143' TERM\n"
        'echo "running"\n'
        "while :; do sleep 0.1; done\n"
    )
    stub.chmod(0o755)
    task = _task_function([str(stub)], tmp_path)
    signum = getattr(signal, how)
    before = signal.signal(signum, _raise_stopped)
    timer = threading.Timer(2, os.kill, (os.getpid(), signal.SIGTERM)) if how == "SIGTERM" else None
    try:
        if timer:
            timer.start()
        else:
            signal.setitimer(signal.ITIMER_REAL, 2)
        with pytest.raises(Stopped, match=how):
            task("run", datetime(2024, 6, 1, 2, tzinfo=timezone.utc))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        if timer:
            timer.cancel()
        signal.signal(signum, before)
    assert record.read_text() == "SIGTERM\n"  # the CLI got SIGTERM (and exited 143)
    pid = int(Path(f"{record}.pid").read_text())
    assert not Path(f"/proc/{pid}").exists()  # waited for: not left running, not a zombie

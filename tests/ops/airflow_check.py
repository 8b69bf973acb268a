"""Run by tests/ops/test_airflow.py with an Airflow venv's python: imports examples/airflow_dag.py into a
DagBag, reads its schedule, and maps the CLI's exit codes through the DAG's task function with a
stand-in CLI. Prints one JSON object."""

from __future__ import annotations

import importlib.util
import json
import sys
from datetime import datetime, timezone

from airflow.timetables.base import TimeRestriction

dag_folder, stub = sys.argv[1], sys.argv[2]
try:
    from airflow.dag_processing.dagbag import DagBag  # Airflow 3

    bag = DagBag(dag_folder=dag_folder)
except ImportError:
    from airflow.models import DagBag  # Airflow 2

    bag = DagBag(dag_folder=dag_folder, include_examples=False)
dag = bag.dags["diffedit_coco_recolor"]
# The first scheduled run (catch-up allowed): when it runs, and which day its partition is.
info = dag.timetable.next_dagrun_info(
    last_automated_data_interval=None,
    restriction=TimeRestriction(
        earliest=datetime(2024, 6, 1, tzinfo=timezone.utc), latest=None, catchup=True
    ),
)
result = {
    "import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
    "timetable": type(dag.timetable).__name__,
    "first_run_after": info.run_after.isoformat(),
    "first_partition": info.data_interval.start.strftime("%Y-%m-%d"),
    "tasks": {
        t.task_id: {
            "retries": t.retries,
            "upstream": sorted(t.upstream_task_ids),
            "execution_timeout_s": t.execution_timeout.total_seconds() if t.execution_timeout else None,
        }
        for t in dag.tasks
    },
    "max_active_runs": dag.max_active_runs,
}

# The task function with a stand-in CLI that exits with the code it is given.
spec = importlib.util.spec_from_file_location("dag_module", f"{dag_folder}/airflow_dag.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.CLI = [stub]
outcomes = {}
for code in (0, 1, 2, 3, 4, 137):
    module.JOB = str(code)  # the stub exits with its last argument
    try:
        module.diffedit_batch("run", datetime(2024, 6, 1, 2, tzinfo=timezone.utc))
        outcomes[code] = "success"
    except Exception as exc:
        outcomes[code] = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
result["outcomes"] = outcomes
print(json.dumps(result))

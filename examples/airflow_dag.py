"""Airflow DAG: the nightly COCO recolouring job, one output partition per logical date.

Each task is a transaction (Airflow's best practice): `diffedit-batch run` commits rows atomically,
writes `_SUCCESS` only when the whole partition is done, and a rerun of the same date resumes where a
killed or failed attempt stopped (or does nothing if it had finished). So retries are safe and
`airflow tasks clear` redoes nothing that was done; `--overwrite` is never used here.

Exit codes map onto task states: 0 success; anything else fails the task (1: the run failed, a retry
resumes it; 2 config error, 3 unusable input, 4 too many failed rows: a retry ends the same way, see
the log and `_summary.json`). 99 (BashOperator's "skipped") is never used.

The workers need the AWS credentials (an instance role, or AWS_* in the Airflow worker's environment);
they never go into the job file. RAY_ADDRESS is the Ray head node's GCS address (host:6379): the
Airflow worker is then the job's Ray driver and must reach the cluster's network (Ray Client,
`ray://`, is not suited to Ray Data). To run the driver on the cluster instead, submit it with the
Ray Jobs API (README.md, "On a Ray cluster"); `ray job submit` then reports failure but not the exit code itself.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator

ENV = {
    "DATA_BUCKET": "my-data-bucket",
    "MODEL_BUCKET": "my-model-bucket",
    "RAY_ADDRESS": "ray-head.internal:6379",  # the head node's GCS address
    # One partition per logical date; {{ ds }} is rendered by Airflow (env is a templated field).
    "DS": "{{ ds }}",
}

with DAG(
    dag_id="diffedit_coco_recolor",
    start_date=datetime(2024, 6, 1),
    schedule="@daily",
    catchup=False,
    max_active_runs=1,  # one writer per output partition
    default_args={"retries": 2, "retry_delay": timedelta(minutes=10)},
    tags=["diffedit", "ray"],
) as dag:
    validate = BashOperator(
        task_id="validate",
        bash_command="diffedit-batch validate jobs/coco_recolor.yaml",
        env=ENV,
        append_env=True,  # keep PATH and the worker's AWS credentials
        cwd="/opt/diffedit-batch",
    )
    run = BashOperator(
        task_id="run",
        bash_command="diffedit-batch run jobs/coco_recolor.yaml",
        env=ENV,
        append_env=True,
        cwd="/opt/diffedit-batch",
        execution_timeout=timedelta(hours=10),
    )
    validate >> run

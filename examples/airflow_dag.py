"""Airflow DAG (Airflow 2.x and 3.x): the nightly COCO recolouring job, one output partition per day.

Which day: the **data interval's start** (``DS`` = ``data_interval_start`` as YYYY-MM-DD) under an
explicit ``CronDataIntervalTimetable``: the run that starts at 02:00 UTC on day D processes day D-1,
on Airflow 2 and 3 alike. (``schedule="@daily"`` differs between them: Airflow 3 builds a
``CronTriggerTimetable`` whose ``{{ ds }}`` is the day that has just started, Airflow 2 a data
interval whose ``{{ ds }}`` is the day before; the same DAG would write different partitions.)

Each task is a transaction (Airflow's best practice): ``diffedit-batch run`` commits rows atomically,
writes ``_SUCCESS`` (in the state folder ``<parent>/.<name>.diffedit/`` beside the output) only when the
whole partition is done, and a rerun of the same partition resumes where a killed or failed attempt
stopped (or does nothing if it had finished). So retries are safe and ``airflow tasks clear`` redoes
nothing that was done; ``--overwrite`` is never used here.

Exit codes and retries: the tasks run the CLI from Python and map its exit code. 0 succeeds; 1 (the
run failed: cluster, storage, a stalled run; a rerun resumes) raises an ordinary error, which Airflow
retries; 2 (configuration), 3 (unusable input) and 4 (too many failed rows) would end the same way on
every retry, so they raise ``AirflowFailException``: the task fails at once, without retrying. (A
``BashOperator`` cannot tell them apart: its retries repeat every non-zero exit.) When the task is
stopped (``execution_timeout``, a cleared or killed task), the CLI gets SIGTERM.

The workers need the AWS credentials (an instance role, or AWS_* in the Airflow worker's environment);
they never go into the job file. RAY_ADDRESS is the Ray head node's GCS address (host:6379): the
Airflow worker is then the job's Ray driver and must reach the cluster's network (Ray Client,
``ray://``, is not suited to Ray Data). To run the driver on the cluster instead, submit it with the
Ray Jobs API (README.md, "On a Ray cluster"); ``ray job submit`` reports failure but not the code.

Settings come from the worker's environment (defaults in brackets): DIFFEDIT_HOME, the checkout or
install to run from [/opt/diffedit-batch]; DIFFEDIT_CLI, the command [.venv/bin/diffedit-batch];
DIFFEDIT_JOB, the job file [jobs/coco_recolor.yaml]; DATA_BUCKET, MODEL_BUCKET, RAY_ADDRESS.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
from datetime import datetime, timedelta

from airflow.timetables.interval import CronDataIntervalTimetable

try:  # Airflow 3: the task SDK
    from airflow.sdk import DAG, task
    from airflow.sdk.exceptions import AirflowFailException
except ImportError:  # Airflow 2
    from airflow import DAG
    from airflow.decorators import task
    from airflow.exceptions import AirflowFailException

log = logging.getLogger(__name__)

HOME = os.environ.get("DIFFEDIT_HOME", "/opt/diffedit-batch")
CLI = shlex.split(os.environ.get("DIFFEDIT_CLI", ".venv/bin/diffedit-batch"))
JOB = os.environ.get("DIFFEDIT_JOB", "jobs/coco_recolor.yaml")
ENV = {
    "DATA_BUCKET": os.environ.get("DATA_BUCKET", "my-data-bucket"),
    "MODEL_BUCKET": os.environ.get("MODEL_BUCKET", "my-model-bucket"),
    "RAY_ADDRESS": os.environ.get("RAY_ADDRESS", "ray-head.internal:6379"),  # the head's GCS address
}
#: Exit codes that a retry would repeat (pipeline.job.ExitCode): fail without retrying.
FINAL = {2: "configuration error", 3: "unusable input", 4: "more rows failed than the job allows"}


def diffedit_batch(command: str, data_interval_start: datetime) -> None:
    """Run ``diffedit-batch COMMAND JOB`` for the partition of ``data_interval_start``, streaming its
    output into the task log; map its exit code onto retry / no retry."""
    ds = data_interval_start.strftime("%Y-%m-%d")
    argv = [*CLI, command, JOB]
    log.info("DS=%s: %s (in %s)", ds, shlex.join(argv), HOME)
    proc = subprocess.Popen(
        argv,
        cwd=HOME,
        env={**os.environ, **ENV, "DS": ds},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    errors: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if line.startswith("error:"):  # the CLI's one-line reason for a non-zero exit
                errors.append(line)
                log.error("%s", line)
            else:
                log.info("%s", line)
        code = proc.wait()
    finally:  # the task was stopped (timeout, SIGTERM): stop the CLI too, which shuts Ray down
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
    if code == 0:
        return
    reason = f": {errors[-1][len('error: ') :]}" if errors else ""
    if code in FINAL:
        # Only a run that finished (4) has written a summary; a configuration or input error has not.
        see = (
            "summary.json in the output's state folder (.<name>.diffedit/ beside it)"
            if code == 4
            else "the error above"
        )
        raise AirflowFailException(
            f"diffedit-batch {command} for DS={ds} exited {code} ({FINAL[code]}){reason}; a retry would end "
            f"the same way; see {see}"
        )
    raise RuntimeError(f"diffedit-batch {command} for DS={ds} exited {code}{reason}; a retry resumes")


with DAG(
    dag_id="diffedit_coco_recolor",
    start_date=datetime(2024, 6, 1),
    schedule=CronDataIntervalTimetable("0 2 * * *", timezone="UTC"),
    catchup=False,
    max_active_runs=1,  # one writer per output partition
    default_args={"retries": 2, "retry_delay": timedelta(minutes=10)},
    tags=["diffedit", "ray"],
) as dag:

    @task
    def validate(data_interval_start=None) -> None:
        diffedit_batch("validate", data_interval_start)

    @task(execution_timeout=timedelta(hours=10))
    def run(data_interval_start=None) -> None:
        diffedit_batch("run", data_interval_start)

    validate() >> run()

"""Running a job: preflight, Ray Data execution, reconciliation, summary.

``run_job(job)``:

1. runs the preflight that ``validate`` prints (``pipeline.validate.preflight``): paths resolved,
   the manifest's schema and ids, the model found and fingerprinted without loading it, the output's
   committed ids against the results identity (``pipeline.identity``). Any problem stops the job
   before Ray is started or anything is written (``ConfigError``, ``InputError``, ``StorageError``); a
   finished output (every id committed, ``_SUCCESS`` present, same results hash) is a no-op;
2. connects to Ray (or starts a local one) and checks that the plan can be scheduled;
3. takes ownership of the output (``job.json`` in its state folder ``.<name>.diffedit/`` beside it),
   removes ``_SUCCESS``, and runs the Ray Data plan on the rows still missing:
   ``read_parquet -> repartition -> fetch (tasks) -> edit (actor pool) -> encode (tasks) ->
   repartition (rows_per_file) -> commit``;
4. removes duplicate ids (only two racing runs can make them), checks that the output holds every
   input id exactly once, and writes ``summary.json``, then ``_SUCCESS`` if the failure policy held.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import logging
import os
import re
import sys
import time
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import IntEnum
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import output as O
from pipeline import rows as R
from pipeline import signals
from pipeline.cluster import LOOPBACK, check_resources, ensure_ray, ray_address  # noqa: F401 (re-exported)
from pipeline.config import ConfigError, JobConfig
from pipeline.faults import (
    RAY_RETRY_PATTERN,
    TransientStorageError,
    find_raised,
    find_rejected_credentials,
    find_transient,
    quiet_transient_tracebacks,
)
from pipeline.lease import Heartbeat, OutputBusy, lease_fields, refuse_if_busy
from pipeline.manifest import ManifestInfo
from pipeline.sizing import Geometry, batching
from pipeline.storage import filesystem, redact
from pipeline.validate import (  # noqa: F401 (InputError, StorageError re-exported)
    InputError,
    Preflight,
    StorageError,
    UnreadableOutput,
    output_location,
    preflight,
)

log = logging.getLogger("pipeline")


class ExitCode(IntEnum):
    """Exit codes of ``diffedit-batch`` (Airflow's BashOperator: 0 success, anything else failure;
    99, its "skipped" code, is never used)."""

    OK = 0  # finished (or nothing to do); _SUCCESS written
    ERROR = 1  # the run itself failed (Ray, storage, an integrity check); rerun to resume
    CONFIG = 2  # the job file or the command line is wrong
    INPUT = 3  # the input is unusable (schema, null/duplicate ids) or conflicts with the output
    POLICY = 4  # finished, but more rows failed than failure.max_failed_fraction allows
    BUSY = 5  # another live run owns the output (pipeline.lease); this run did nothing more


@dataclass(frozen=True)
class RunOutcome:
    """What a run did: its exit code, a one-line message and the summary written (if any)."""

    exit_code: ExitCode
    status: str  # succeeded | already_complete | failed_policy
    message: str
    summary: dict[str, Any]


def package_version() -> str:
    try:
        return importlib.metadata.version("diffedit-batch")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source checkout without install
        import diffedit

        return diffedit.__version__


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


# --------------------------------------------------------------------------- the run


def run_job(
    job: JobConfig,
    *,
    overwrite: bool = False,
    address: str | None = None,
    retry_failed: bool = False,
    repair: bool = False,
) -> RunOutcome:
    """Run ``job`` to completion (see the module docstring). Raises ``ConfigError``, ``InputError`` or
    ``StorageError`` from the preflight, before Ray is started or anything is written, and anything
    else when the run itself fails.

    ``retry_failed``: the committed ``failed`` rows are edited again, as if missing; each new record
    replaces the old one (the new part is committed first, then ``dedupe`` rewrites the old part
    without it, keeping the ``ok`` / newest copy: a crash in between is repaired by the next run).

    ``repair``: committed parts that cannot be read as Parquet are first moved to ``unreadable/`` in
    the state folder, so their rows are missing and edited again. Without it such a part stops the run
    (``UnreadableOutput``, exit 3, naming the files) and ``_SUCCESS`` is removed: the output is no
    longer complete."""
    started = time.time()
    run_id = new_run_id()
    fs, path = output_location(job)
    try:
        O.adopt_legacy(fs, path)  # an output of an earlier version: its state moves beside the folder
        owner = O.read_json(fs, O.state(path, O.JOB_FILE))
    except Exception:  # storage trouble: the preflight reports it
        owner = None
    refuse_if_busy(owner, job.output.path)  # another live run on this output: exit 5 at once
    if repair:
        moved = O.set_aside_unreadable(fs, path)
        if moved:
            shown = redact(O.state(path, O.UNREADABLE))
            log.warning("--repair: %d unreadable part(s) moved to %s: %s", len(moved), shown, moved)
        else:
            log.info("--repair: every committed part of %s is readable", redact(path))
    # every check validate does, before Ray or any write (rows' texts only when there is work to do)
    try:
        pre = preflight(job, overwrite=overwrite, retry_failed=retry_failed, texts_when_complete=False)
    except UnreadableOutput:
        O.remove(fs, O.state(path, O.SUCCESS_FILE))  # a sensor must not take this output as complete
        raise
    for line in pre.lines:
        if "WARNING" in line:
            log.warning("%s", line.replace("WARNING ", ""))
    shown_out = redact(job.output.path)
    if pre.complete:
        out_fs, out = filesystem(pre.job.output.path, pre.job.storage)
        summary = O.read_json(out_fs, O.state(out, O.SUMMARY_FILE)) or {}
        message = (
            f"already complete: all {len(pre.input_ids)} rows are in {shown_out} (_SUCCESS present); "
            "nothing to do (--overwrite starts afresh)"
        )
        return RunOutcome(ExitCode.OK, "already_complete", message, summary)
    written, job = job, pre.job
    input_set = set(pre.input_ids)
    retried = set(pre.failed_ids) if retry_failed and not overwrite else set()
    done = frozenset() if overwrite else frozenset(set(pre.committed) - retried)
    todo = len(input_set - done)
    if retried:
        log.info("--retry-failed: %d failed row(s) in %s are edited again", len(retried), shown_out)
    if todo:  # before touching the output: a plan that cannot run is a config error (exit 2)
        check_resources(job, address, connect=connect_ray)
        connect_ray(address)
        signals.reinstall_if_installed()  # ray.init replaced the CLI's SIGTERM handler with its own

    out_fs, out = filesystem(job.output.path, job.storage)
    if overwrite:
        removed = O.clear_output(out_fs, out)
        log.info("--overwrite: removed %d part(s) and the markers from %s", removed, shown_out)
    O.write_json_atomic(
        out_fs,
        O.state(out, O.JOB_FILE),
        {
            "run_id": run_id,
            "job": job.name,
            "config_file": job.source,
            "config_hash": job.config_hash,
            "results_hash": pre.results_hash,
            "results_identity": pre.identity,
            "started_at": _iso(started),
            **lease_fields(),  # where this driver runs, and its heartbeat (pipeline.lease)
        },
    )
    heartbeat = Heartbeat(out_fs, out, run_id).start()
    try:
        return _edit_and_finish(
            written, pre, out_fs, out, run_id=run_id, started=started, done=done, retried=retried
        )
    finally:
        heartbeat.release()


def _edit_and_finish(
    written: JobConfig,
    pre: Preflight,
    out_fs: fsspec.AbstractFileSystem,
    out: str,
    *,
    run_id: str,
    started: float,
    done: frozenset[str],
    retried: set[str],
) -> RunOutcome:
    """``run_job`` once this run owns the output: edit the rows not in ``done``, remove duplicates, check
    that every input id is there once, write ``summary.json`` and ``_SUCCESS``."""
    job, manifest, input_ids = pre.job, pre.manifest, pre.input_ids
    input_set = set(input_ids)
    todo = len(input_set - done)
    shown_out = redact(written.output.path)
    O.remove(out_fs, O.state(out, O.SUCCESS_FILE))
    O.remove(out_fs, O.state(out, O.STAGING), recursive=True)
    O.remove_legacy(out_fs, out)
    log.info(
        "run %s of job %s: %d input rows in %d file(s); %d already committed in %s; %d to edit",
        run_id, job.name, len(input_ids), len(manifest.files), len(done), shown_out, todo,
    )  # fmt: skip

    edit_seconds = 0.0
    if todo:
        edit_started = time.time()
        # The actors load the model where the preflight found it (a hub revision pinned to its commit)
        # and label rows with the source as written in the job, not a resolved or ephemeral path.
        loaded = dataclasses.replace(
            job,
            model=dataclasses.replace(job.model, source=pre.model.location, revision=pre.model.revision),
        )
        execute(
            loaded, manifest, done, run_id, out_fs, out,
            model_label=redact(written.model.source), geometry=pre.model.geometry,
        )  # fmt: skip
        edit_seconds = time.time() - edit_started

    replaced = 0
    if retried:  # the old failed copies of rows committed again by this run (dedupe removes them)
        copies = O.read_parts(out_fs, out, columns=["id", "run_id"])
        ids_runs = zip(copies.column("id").to_pylist(), copies.column("run_id").to_pylist(), strict=True)
        again = Counter(i for i, r in ids_runs if i in retried)
        replaced = sum(1 for n in again.values() if n > 1)
    removed = O.dedupe(out_fs, out) - replaced
    O.remove(out_fs, O.state(out, O.STAGING), recursive=True)
    columns = [
        "id",
        "status",
        "error",
        "warning",
        "run_id",
        "unet_evals",
        "keep",
        "reject_reason",
        *[f.name for f in R.SCORE_FIELDS],
        *[f"seconds_{s}" for s in R.STAGE_SECONDS],
    ]
    final = O.read_parts(out_fs, out, columns=columns)
    ids = final.column("id").to_pylist()
    counts = Counter(ids)
    missing = input_set - set(counts)
    doubled = [k for k, n in counts.items() if n > 1]
    if missing or doubled or len(ids) != len(input_set):
        raise RuntimeError(
            f"integrity check failed for {shown_out}: {len(missing)} input id(s) missing "
            f"(e.g. {sorted(missing)[:3]}), {len(doubled)} duplicated; rerun the job to complete it"
        )
    summary = build_summary(
        written, manifest, final, run_id=run_id, started=started, edit_seconds=edit_seconds,
        skipped=len(done), duplicates_removed=removed, results_hash=pre.results_hash,
        retried=sorted(retried), config_hash=job.config_hash,
    )  # fmt: skip
    passed = summary["output"]["failed_fraction"] <= job.failure.max_failed_fraction
    summary["status"] = "succeeded" if passed else "failed_policy"
    O.write_json_atomic(out_fs, O.state(out, O.SUMMARY_FILE), summary)
    if passed:
        O.write_bytes_atomic(out_fs, O.state(out, O.SUCCESS_FILE), (run_id + "\n").encode())
        message = (
            f"succeeded: {summary['output']['ok']} ok, {summary['output']['failed']} failed, in {shown_out}"
        )
        return RunOutcome(ExitCode.OK, "succeeded", message, summary)
    message = (
        f"failed: {summary['output']['failed']} of {summary['output']['rows']} rows failed "
        f"({summary['output']['failed_fraction']:.1%} > failure.max_failed_fraction "
        f"{job.failure.max_failed_fraction:.1%}); no _SUCCESS written"
    )
    return RunOutcome(ExitCode.POLICY, "failed_policy", message, summary)


def connect_ray(address: str | None) -> bool:
    """``ensure_ray`` with its configuration errors as ``ConfigError`` (exit 2, not "a rerun resumes"):
    a malformed address (``RAY_ADDRESS=http://head:8265`` is the Jobs API's URL, not a cluster's GCS
    address) or token authentication without a token. A local cluster started here keeps Ray 2.60's
    default, token authentication, without Ray's notice about that default on every run (a WARNING line
    in every cron mail); Ray's warning that authentication is *disabled* still shows."""
    from ray.exceptions import AuthenticationError

    # One filter object for the process: addFilter skips a filter already there, so repeated runs in
    # one process (tests, notebooks) do not stack copies.
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_TOKEN_NOTICE)
    logging.getLogger("ray._private.worker").addFilter(_NO_ANSI)  # "View the dashboard at <green URL>"
    _plain_forwarded_lines()
    try:
        return ensure_ray(address)
    except ValueError as exc:
        raise ConfigError(
            f"Ray address {address or os.environ.get('RAY_ADDRESS')!r}: {_first_line(exc)}"
        ) from None
    except AuthenticationError as exc:
        raise ConfigError(
            f"Ray token authentication: {_first_line(exc)} (set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, "
            "or RAY_AUTH_MODE=disabled for a cluster without authentication)"
        ) from None
    except RuntimeError as exc:
        if not _is_auth_error(exc):
            raise
        raise ConfigError(
            f"Ray token authentication: {_first_line(exc)[:300]} (set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH "
            "to the cluster's token)"
        ) from None


class _DropMessages(logging.Filter):
    """Drops the records of one Ray logger whose message starts with one of ``prefixes``: notices about
    Ray's own defaults that are not problems (an operator grepping for WARNING/ERROR must find only
    real ones); every other record passes."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


_TOKEN_NOTICE = _DropMessages("Token authentication is enabled")


class _StripAnsi(logging.Filter):
    """Removes ANSI colour codes from a Ray logger's records: Ray colours the dashboard URL of its
    "Connected to Ray cluster" line even when the log is a file (cron, Airflow)."""

    CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "\x1b[" in message:
            record.msg, record.args = self.CODES.sub("", message), None
        return True


_NO_ANSI = _StripAnsi()


def _plain_forwarded_lines() -> None:
    """Lines Ray forwards to the driver (workers', actors', gcs_server's) reach the log without colour
    when the log is not a terminal (cron, Airflow, ``ray job submit``): Ray colours their "(pid=...)"
    prefix unless ``RAY_COLOR_PREFIX=0``, which it reads as it prints each line. A user's own setting
    stays."""
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


def _is_auth_error(exc: BaseException) -> bool:
    """Whether Ray failed to connect because the cluster refused its (missing or wrong) token."""
    text = str(exc)
    return "InvalidAuthToken" in text or "AuthenticationError" in text


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def execute(
    job: JobConfig,
    manifest: ManifestInfo,
    done: frozenset[str],
    run_id: str,
    out_fs: fsspec.AbstractFileSystem,
    out: str,
    *,
    model_label: str | None = None,
    geometry: Geometry | None = None,
) -> list[O.PartWritten]:
    """Build and run the Ray Data plan over the rows not in ``done`` (Ray must be initialised).
    ``model_label``: the ``model`` column's value (default: the source the actors load). ``geometry``:
    the model's (the preflight's ``ModelSource.geometry``): the batch plan and the regrouping key
    (``pipeline.sizing``, ``pipeline.grouping``). The watchdog (``pipeline.watchdog``) ends a plan that
    stops moving with ``Stalled`` (exit 1)."""
    import ray

    from pipeline.watchdog import ProgressBoard, Stalled, Watchdog, board_snapshot

    c = job.compute
    in_fs, _ = filesystem(job.input.paths[0], job.storage)
    board = ray.remote(num_cpus=0)(ProgressBoard).remote()
    dog = Watchdog(c, board_snapshot(board)).start()  # from here on, a plan that stops moving ends
    try:
        try:
            return _run_plan(job, manifest, done, run_id, out_fs, out, in_fs, board, model_label, geometry)
        finally:
            dog.stop()
    except KeyboardInterrupt:
        if dog.reason:  # the watchdog interrupted the plan; Ray Data has shut its executor down
            raise Stalled(dog.reason) from None
        raise
    finally:
        with contextlib.suppress(Exception):
            ray.kill(board)


def _run_plan(
    job: JobConfig,
    manifest: ManifestInfo,
    done: frozenset[str],
    run_id: str,
    out_fs: fsspec.AbstractFileSystem,
    out: str,
    in_fs: Any,
    board: Any,
    model_label: str | None = None,
    geometry: Geometry | None = None,
) -> list[O.PartWritten]:
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from pipeline.stages import encode_rows, fetch_rows
    from pipeline.watchdog import WatchedEditStage

    c = job.compute
    plan = batching(c, geometry)
    log.info("%s", plan.describe())
    ctx = DataContext.get_current()
    ctx.max_errored_blocks = 0
    # A fetch or commit task that failed on storage trouble (after botocore's own retries) runs again
    # after an exponential backoff; nothing else is retried (a bug or a row's error is not transient).
    ctx.retried_map_errors = [RAY_RETRY_PATTERN]
    ctx.max_map_retries = job.storage.task_retries
    io = {"num_cpus": c.io_cpus}
    ds = ray.data.read_parquet(
        list(manifest.files), filesystem=in_fs, partitioning=None, file_extensions=["parquet"], **io
    )
    ds = repartition(ds, c.rows_per_block, strict=False, remote_args=io)
    ds = ds.map_batches(
        fetch_rows,
        batch_format="pyarrow",
        batch_size=None,
        fn_kwargs={"params": job.params, "images": job.images, "storage": job.storage, "done": done,
                   "threads": c.fetch_threads, "limits": job.limits, "geometry": geometry,
                   "input_image": job.output.input_image},
        **io,
    )  # fmt: skip
    # Two batches in flight per actor: one in the model, the next one queued, its rows already
    # transferred, so the GPU does not wait for the fetch stage between calls (the prefetch). This is
    # Ray Data 2.60's default (2 x max concurrency); set here so a change of default cannot remove it.
    # pipeline.sizing counts the queued batch in the actor's memory.
    sizes = (
        {"size": c.min_actors}
        if c.min_actors == c.max_actors
        else {"min_size": c.min_actors, "max_size": c.max_actors}
    )
    pool = ActorPoolStrategy(**sizes, max_tasks_in_flight_per_actor=ACTOR_BATCHES_IN_FLIGHT)
    memory = {"memory": c.actor_memory_gb * 1024**3} if c.actor_memory_gb > 0 else {}
    with warnings.catch_warnings():  # max_restarts has no named parameter in Ray 2.60
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = ds.map_batches(
            WatchedEditStage,
            batch_format="pyarrow",
            # a window of group_window rows per call, edited in chunks of one model resolution
            # (pipeline.grouping); else batch_size rows per call
            batch_size=plan.group_window or plan.batch_size,
            compute=pool,
            num_cpus=c.cpus_per_actor,
            num_gpus=c.gpus_per_actor,
            fn_constructor_kwargs={"job": job, "board": board, "model_label": model_label},
            runtime_env={"env_vars": actor_env()},
            # Ray Data passes the actors' constructor arguments as object references, which Ray Core
            # cannot restore when it restarts an actor (Ray issues 53727, 57733): with restarts on, every
            # run logs an ERROR line saying so. An actor that dies is not restarted: Ray Data starts a
            # new one and edits the lost rows again, or fails the run (exit 1) when it died inside a
            # batch, and the rerun resumes (tests/pipeline/test_exit_codes.py).
            max_restarts=0,
            **memory,
        )
    ds = ds.map_batches(
        encode_rows,
        batch_format="pyarrow",
        batch_size=None,
        fn_kwargs={
            "run_id": run_id,
            "version": package_version(),
            "keep_rule": job.filter,
            "output": job.output,
        },
        **io,
    )
    # Parts of exactly output.rows_per_file rows (the last one of a run may hold fewer): re-block the
    # stream (a streaming repartition, not an all-to-all shuffle; strict: exact sizes, else Ray bundles
    # best-effort and leaves a small block per input block), and the sink merges what it gets.
    ds = repartition(ds, job.output.rows_per_file, strict=True, remote_args=io)
    sink = O.make_datasink(out_fs, out, job.output.rows_per_file, run_id)
    try:
        with quiet_transient_tracebacks():
            ds.write_datasink(sink, ray_remote_args=io)
    except Exception as exc:
        if find_raised(exc, O.OwnershipLost) is not None:
            raise ownership_lost(out_fs, out, run_id) from None
        rejected = find_rejected_credentials(exc)
        if rejected is not None:  # exit 2: fix the environment; what was committed stays
            raise ConfigError(str(rejected)) from None
        transient = find_transient(exc)
        if transient is None:
            raise
        raise TransientStorageError(
            f"storage unavailable: {str(transient).splitlines()[0]} "
            f"(after {job.storage.task_retries} task retries); the rows concerned were not committed"
        ) from None
    return sink.written


def ownership_lost(out_fs: fsspec.AbstractFileSystem, out: str, run_id: str) -> RuntimeError:
    """The one-line error of a run whose commit found that it no longer owns the output: another run
    took it over (``OutputBusy``, exit 5), or ``job.json`` is gone, the output's state deleted or cleared
    under the run (exit 1: a rerun starts on what is left)."""
    owner = O.read_json(out_fs, O.state(out, O.JOB_FILE))
    if owner is None:
        return RuntimeError(
            f"output {redact(out)}: its {redact(O.state(out, O.JOB_FILE))} is gone (the output's state was "
            f"deleted or cleared while run {run_id} wrote to it); this run stopped committing"
        )
    return OutputBusy(
        f"output {redact(out)} was taken over by run {owner.get('run_id')} (another run started on it); "
        f"run {run_id} stopped committing, the rows it committed stay"
    )


def repartition(ds: Any, rows: int, *, strict: bool, remote_args: dict[str, Any]) -> Any:
    """``ds.repartition(target_num_rows_per_block=rows, strict=strict)`` whose tasks reserve
    ``remote_args`` (``compute.io_cpus``) like the job's other I/O stages, instead of Ray's default of
    one whole CPU per map task.

    Why: Ray Data (2.60) gives every operator a share of the cluster's CPUs (its resource budget) and
    launches a task only when the task's CPUs fit in that share. On a 2-CPU node whose model actor holds
    one CPU, a one-CPU re-blocking task never fits while the stages upstream of it still run: the
    re-blocked rows queued ``backpressured:tasks(ResourceBudget)`` and every part was committed in the
    last seconds of the run, so a run killed at 90 % had committed nothing. ``Dataset.repartition``
    takes no ``ray_remote_args``, so they are set on the logical operator it just added (the same
    field ``map_batches(num_cpus=...)`` fills); ``tests/pipeline/test_reliability_commit.py`` fails if
    a Ray upgrade moves it."""
    out = ds.repartition(target_num_rows_per_block=rows, strict=strict)
    op = out._logical_plan.dag  # the StreamingRepartition just added
    args = getattr(op, "ray_remote_args", None)
    if not isinstance(args, dict):  # pragma: no cover - a Ray without the field: keep its default
        log.warning("cannot set the resources of Ray Data's repartition (%s); it reserves 1 CPU", type(op))
        return out
    args.update(remote_args)
    return out


#: Batches sent to a model actor at once: the one it edits and the one queued behind it (``execute``).
ACTOR_BATCHES_IN_FLIGHT = 2


def actor_env() -> dict[str, str]:
    """Environment of the model actors. OpenMP threads that spin while waiting (libgomp's default)
    make torch on a busy CPU dozens of times slower (measured on a 2-core machine: 0.25 s against
    17 s per row of the tiny model with 2 threads while another process used one core); passive
    waiting costs nothing measurable when the cores are free. The driver's Hugging Face Hub settings
    (``HUB_ENV``) go along: a hub id is loaded on the actors, which must read the same cache, offline
    when the driver is (tokens are not forwarded: they would show in the job's runtime env)."""
    hub = {name: os.environ[name] for name in HUB_ENV if name in os.environ}
    return {
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        # No "Loading weights" progress bars from the actors: their stderr is a log, never a terminal.
        "HF_HUB_DISABLE_PROGRESS_BARS": os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        "TQDM_DISABLE": os.environ.get("TQDM_DISABLE", "1"),
        **hub,
    }


#: Hub client settings passed from the driver's environment to the model actors.
HUB_ENV = ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_HOME")


# --------------------------------------------------------------------------- summary


def build_summary(
    job: JobConfig,
    manifest: ManifestInfo,
    final: pa.Table,
    *,
    run_id: str,
    started: float,
    edit_seconds: float,
    skipped: int,
    duplicates_removed: int,
    results_hash: str,
    retried: list[str] | None = None,
    config_hash: str | None = None,
) -> dict[str, Any]:
    """The run summary (``summary.json`` in the state folder): counts, throughput, durations, hashes,
    versions; errors grouped by class (``group_errors``); ``retried``: the ids a ``--retry-failed`` run
    edited again. ``job`` is the job as written (paths shown as the user wrote them); ``config_hash`` is the hash of the
    resolved job that ``validate`` prints and ``job.json`` records (default: ``job``'s)."""
    statuses = final.column("status").to_pylist()
    ok = sum(1 for s in statuses if s == R.OK)
    rows = len(statuses)
    mine = final.filter(pc.equal(final.column("run_id"), run_id))
    mine_ok = sum(1 for s in mine.column("status").to_pylist() if s == R.OK)
    finished = time.time()
    seconds = {}
    for stage in R.STAGE_SECONDS:
        values = [v for v in mine.column(f"seconds_{stage}").to_pylist() if v is not None]
        seconds[stage] = {
            "total": round(sum(values), 3),
            "mean_per_row": round(sum(values) / len(values), 4) if values else None,
        }
    errors = group_errors(final.column("id").to_pylist(), final.column("error").to_pylist())
    warning_codes = Counter(
        w.split(":", 1)[0].strip()
        for text in (final.column("warning").to_pylist() if "warning" in final.column_names else [])
        if text
        for w in text.split("; ")
    )
    import diffedit

    versions = {
        "diffedit-batch": package_version(),
        "diffedit": diffedit.__version__,
        "python": sys.version.split()[0],
    }
    for name in ("ray", "torch", "diffusers", "transformers", "pyarrow"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return {
        "job": job.name,
        "config_file": job.source,
        "config_hash": config_hash or job.config_hash,
        "results_hash": results_hash,
        "run_id": run_id,
        "started_at": _iso(started),
        "finished_at": _iso(finished),
        "input": {
            "paths": [redact(p) for p in job.input.paths],
            "files": len(manifest.files),
            "rows": manifest.num_rows,
        },
        "output": {
            "path": redact(job.output.path),
            "rows": rows,
            "ok": ok,
            "failed": rows - ok,
            "failed_fraction": (rows - ok) / rows if rows else 0.0,
            "max_failed_fraction": job.failure.max_failed_fraction,
            "parts": len(set(final.column("_file").to_pylist())),
            "duplicates_removed": duplicates_removed,
            # ok rows whose query and caption were the same tokens after truncation (a no-op edit)
            "unchanged": warning_codes.get(R.UNCHANGED, 0),
            # rows whose caption or query was cut at the text encoder's token limit
            "truncated": warning_codes.get(R.TRUNCATED, 0),
        },
        "this_run": {
            "rows_edited": mine.num_rows,
            "rows_ok": mine_ok,
            "rows_failed": mine.num_rows - mine_ok,
            "rows_already_done": skipped,
            # --retry-failed: failed rows edited again, and how many of them are ok now
            "rows_retried": len(retried or []),
            "rows_retried_ok": sum(
                1
                for i, st in zip(
                    mine.column("id").to_pylist(), mine.column("status").to_pylist(), strict=True
                )
                if st == R.OK and i in set(retried or [])
            ),
            "seconds_total": round(finished - started, 3),
            "seconds_execute": round(edit_seconds, 3),
            "rows_per_second": round(mine.num_rows / edit_seconds, 4)
            if edit_seconds > 0 and mine.num_rows
            else 0.0,
            "unet_evals": int(sum(v for v in mine.column("unet_evals").to_pylist() if v)),
            "seconds_per_stage": seconds,
        },
        "dataset": dataset_figures(final),
        "errors": errors,
        "model": redact(job.model.source),
        "compute": {k: v for k, v in job.to_dict()["compute"].items()},
        "versions": versions,
    }


def dataset_figures(final: pa.Table) -> dict[str, Any]:
    """The output as a dataset: the yield (kept / ok), how many ok rows each filter bound rejected, and
    each score's distribution over the ok rows (n, mean, min, 5/25/50/75/95th percentiles, max)."""
    names = final.column_names
    ok_rows = [r for r in final.select([c for c in names if c != "_file"]).to_pylist() if r["status"] == R.OK]
    kept = sum(1 for r in ok_rows if r.get("keep"))
    rejected_by: Counter[str] = Counter()
    for r in ok_rows:
        for reason in (r.get("reject_reason") or "").split("; "):
            if reason:
                rejected_by[reason.split(" ")[0]] += 1
    scores: dict[str, Any] = {}
    for f in R.SCORE_FIELDS:
        values = sorted(float(r[f.name]) for r in ok_rows if r.get(f.name) is not None)
        if not values:
            continue

        def q(p: float, v: list[float] = values) -> float:
            return round(v[min(len(v) - 1, int(p * (len(v) - 1) + 0.5))], 4)

        scores[f.name] = {
            "n": len(values),
            "mean": round(sum(values) / len(values), 4),
            "min": values[0],
            "p5": q(0.05),
            "p25": q(0.25),
            "p50": q(0.5),
            "p75": q(0.75),
            "p95": q(0.95),
            "max": values[-1],
        }
    return {
        "ok": len(ok_rows),
        "kept": kept,
        "yield": round(kept / len(ok_rows), 4) if ok_rows else None,
        "rejected_by": dict(sorted(rejected_by.items())),
        "scores": scores,
    }


def summary_table(summary: dict[str, Any]) -> str:
    """A plain-text table of a summary, for the end of a run."""
    out, run = summary.get("output", {}), summary.get("this_run", {})
    lines = [
        ("status", summary.get("status", "?")),
        ("output", out.get("path", "?")),
        ("rows (ok / failed)", f"{out.get('rows', 0)} ({out.get('ok', 0)} / {out.get('failed', 0)})"),
        (
            "failed fraction",
            f"{out.get('failed_fraction', 0):.2%} (max {out.get('max_failed_fraction', 0):.2%})",
        ),
        ("edited this run", f"{run.get('rows_edited', 0)} ({run.get('rows_already_done', 0)} already done)"),
        *(
            [("retried (failed before)", f"{run['rows_retried']} ({run.get('rows_retried_ok', 0)} ok now)")]
            if run.get("rows_retried")
            else []
        ),
        (
            "throughput",
            f"{run.get('rows_per_second', 0):.3f} rows/s over {run.get('seconds_execute', 0):.1f} s",
        ),
        ("wall time", f"{run.get('seconds_total', 0):.1f} s"),
    ]
    for stage, v in (run.get("seconds_per_stage") or {}).items():
        if v.get("mean_per_row") is not None:
            lines.append((f"  {stage}", f"{v['mean_per_row']:.3f} s/row ({v['total']:.1f} s)"))
    data = summary.get("dataset") or {}
    if data.get("ok"):
        rejected = ", ".join(f"{k} {v}" for k, v in (data.get("rejected_by") or {}).items())
        lines.append(
            ("kept (yield)", f"{data['kept']} of {data['ok']} ok ({data['yield']:.1%})"
             + (f"; rejected by {rejected}" if rejected else ""))
        )  # fmt: skip
        for name, d in (data.get("scores") or {}).items():
            lines.append(
                (f"  {name}", f"median {d['p50']:.4g} [p5 {d['p5']:.4g}, p95 {d['p95']:.4g}] (n {d['n']})")
            )
    lines += [
        ("config hash", str(summary.get("config_hash", ""))[:16]),
        ("run id", summary.get("run_id", "")),
    ]
    if out.get("unchanged") or out.get("truncated"):
        lines.append(
            (
                "warnings",
                f"{out.get('unchanged', 0)} unchanged (no-op edit), {out.get('truncated', 0)} truncated",
            )
        )
    errors = summary.get("errors") or []
    if errors:
        lines.append(("errors", f"{len(errors)} class(es)"))
    for group in errors[:TABLE_ERROR_CLASSES]:
        examples = ", ".join(group["examples"][:3])
        lines.append((f"  {group['count']} x", f"{group['class'][:100]} (e.g. {examples})"))
    if len(errors) > TABLE_ERROR_CLASSES:
        rest = errors[TABLE_ERROR_CLASSES:]
        lines.append(("  ...", f"and {len(rest)} more class(es), {sum(g['count'] for g in rest)} row(s)"))
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in lines)


#: How many error classes the end-of-run table shows, and how many example ids a class keeps.
TABLE_ERROR_CLASSES, ERROR_EXAMPLES = 5, 5

_URI = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s,;'\"\])]+")
_PATH = re.compile(r"(?<![\w<])/[^\s,;:'\"\])]+")
_SIZE = re.compile(r"\b\d+x\d+\b")  # 640x480
_NUMBER = re.compile(r"(?<![A-Za-z_\d])\d+(?:\.\d+)?")  # not in names such as float16


def error_class(error: str, row_id: str | None = None) -> str:
    """The class of a row's error: its message with what is particular to the row taken out (URIs and
    paths -> ``<uri>``, the row's id -> ``<id>``, numbers -> ``<n>``), so that rows that failed for one
    reason group together: ``image s3://b/1.png not found`` -> ``image <uri> not found``."""
    text = error
    if row_id:
        text = text.replace(row_id, "<id>")
    text = _URI.sub("<uri>", text)
    text = _PATH.sub("<path>", text)
    text = _SIZE.sub("<n>x<n>", text)
    text = _NUMBER.sub("<n>", text)
    return " ".join(text.split())[:300]


def group_errors(ids: list[str], errors: list[str | None]) -> list[dict[str, Any]]:
    """Failed rows grouped by ``error_class``: ``[{class, count, examples: [ids], example_error}]``,
    largest group first (ties by class), examples the first ids in sorted order."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for row_id, error in zip(ids, errors, strict=True):
        if error:
            groups.setdefault(error_class(error, row_id), []).append((row_id, error))
    out = []
    for cls, members in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        members.sort()
        out.append(
            {
                "class": cls,
                "count": len(members),
                "examples": [m[0] for m in members[:ERROR_EXAMPLES]],
                "example_error": members[0][1],
            }
        )
    return out


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")

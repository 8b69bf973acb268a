"""The output folder: atomically committed Parquet parts; the run's state in a hidden folder beside it.

Layout, for ``output.path`` = ``<parent>/<name>``::

    <parent>/<name>/part-<sha256 of its ids>.parquet   committed rows (complete files only): the dataset
    <parent>/.<name>.diffedit/_SUCCESS       every input id is committed and the failure policy held
    <parent>/.<name>.diffedit/job.json       the run that owns the output: run id, results hash, lease
    <parent>/.<name>.diffedit/summary.json   the last run's summary (written before _SUCCESS)
    <parent>/.<name>.diffedit/staging/part-<hash>.parquet.<uuid>.tmp   parts being written; never read
    <parent>/.<name>.diffedit/unreadable/part-<hash>.parquet    corrupt parts set aside by ``--repair``

The output folder holds the parts and nothing else, at every moment (during a run, after a kill, after
success), so every reader reads it as given: pyarrow.dataset, pandas, Ray Data, Spark, DuckDB, Hugging
Face ``datasets`` and polars, whose ``read_parquet(folder)`` lists every file below the folder (hidden
ones too) and refuses a folder of mixed extensions. (Earlier versions kept the state in ``.diffedit/``
inside the folder, which polars could not read past; and a ``_SUCCESS`` file among the parts, Hadoop's
convention, is read by ``datasets`` as a data file and fails the load.) The state folder is hidden, so a
reader of the *parent* folder (nightly outputs ``edits/<date>/`` read as one dataset) skips it too. It
lives on the same filesystem as the parts (a sibling, never a mount point apart: ``check_location``), so a
commit is a rename.

Exactly-once, by construction rather than by Ray Data's checkpointing (which, on Ray 2.60, writes data
files under their final names, so a reader can see a half-written file, and whose checkpoint filter
actor reserves a whole CPU, which left a resumed run on a 2-core machine waiting for ever):

* each part is written to the state folder's ``staging/`` and then renamed into place (a local rename
  is atomic; on S3 a copy makes the object appear complete or not at all), so a reader never sees a
  partial file;
* a part's name is the hash of its ids, so a retried write task rewrites the same file instead of
  adding a second copy;
* before a run, the ids already committed are read (the ``id`` column only) and their rows are dropped
  from the input, so a rerun after a crash edits only the missing rows;
* before every commit the writer checks that its run still owns the folder (``job.json``): the
  workers of a killed driver, which may live on for a few seconds, stop committing once a new run has
  started;
* after the run, ``dedupe`` removes any id committed twice (only possible if two runs raced), before
  ``summary.json`` and then ``_SUCCESS`` are written.

Parquet is read and written through pyarrow filesystems (``pipeline.storage.read_parquet``,
``parquet_bytes``), never through Python file objects (an Arrow teardown bug aborts the process at exit).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa

from diffedit.loading import files
from pipeline import rows as R
from pipeline.faults import (
    StorageCredentialsError,
    TransientStorageError,
    credentials_message,
    describe,
    is_transient,
    rejected_credentials,
)
from pipeline.storage import is_local_fs, join, parquet_bytes, parquet_file, read_parquet, redact

log = logging.getLogger(__name__)

PART_PREFIX, PART_SUFFIX = "part-", ".parquet"
#: The state folder's name beside the output folder ``<name>``: ``.<name>.diffedit``.
STATE_SUFFIX = ".diffedit"
#: The files and folders inside the state folder (``state(out, NAME)`` is a path).
STAGING = "staging"
JOB_FILE = "job.json"
SUMMARY_FILE = "summary.json"
SUCCESS_FILE = "_SUCCESS"
UNREADABLE = "unreadable"  # parts set aside by ``run --repair``
#: What earlier versions wrote inside the folder (readers tripped on them): adopted or removed by a run.
#: The state folder of earlier versions, inside the output: ``<out>/.diffedit/``.
LEGACY_STATE_DIR = ".diffedit"
LEGACY_FILES = ("_SUCCESS", "_job.json", "_summary.json")
LEGACY_DIRS = ("_staging",)


class OutputLocationError(ValueError):
    """An output folder whose state folder cannot sit beside it (``state_dir``, ``check_location``)."""


def state_dir(out: str) -> str:
    """The run state's folder of the output folder ``out``: ``<parent>/.<name>.diffedit`` (hidden, beside
    it). ``OutputLocationError`` for an output with no parent (a bucket's root, ``/``): no place for it."""
    parent, name = posixpath.split(out.rstrip("/"))
    if not name or not parent or name in (".", ".."):
        raise OutputLocationError(
            f"output {redact(out)} has no parent folder (a bucket's root?): the run's state is kept beside "
            "the output folder, so write to a folder inside it (e.g. s3://bucket/edits/run1)"
        )
    return join(parent, f".{name}{STATE_SUFFIX}")


def state(out: str, name: str) -> str:
    """The path of ``name`` (``JOB_FILE``, ``SUCCESS_FILE``, ...) in the state folder of ``out``."""
    return join(state_dir(out), name)


def check_location(out: str, local: bool) -> None:
    """Refuse (``OutputLocationError``) an output whose state folder could not sit beside it on the same
    filesystem: no parent folder, or a local output folder that is a mount point (its sibling would be on
    the filesystem above it, where a commit's rename becomes a copy)."""
    state_dir(out)
    if local and os.path.ismount(out.rstrip("/") or "/"):
        raise OutputLocationError(
            f"output {out} is a mount point: the run's state folder {state_dir(out)} would be on another "
            "filesystem, where a commit is a copy rather than an atomic rename; write to a folder inside it"
        )


class OwnershipLost(RuntimeError):
    """Another run took over the output folder: this (orphaned) writer must not commit."""


# --------------------------------------------------------------------------- reading state


def part_files(fs: fsspec.AbstractFileSystem, out: str) -> list[str]:
    """The committed part files directly under ``out``, sorted (listing afresh: s3fs caches listings)."""
    fs.invalidate_cache(out)
    if not fs.exists(out):
        return []
    names = fs.ls(out, detail=False)
    return sorted(
        n for n in names if posixpath.basename(n).startswith(PART_PREFIX) and n.endswith(PART_SUFFIX)
    )


class UnreadableParts(ValueError):
    """Committed part files that cannot be read as Parquet (truncated, overwritten, not Parquet): the
    output cannot be trusted until they are set aside (``set_aside_unreadable``, ``run --repair``)."""

    def __init__(self, out: str, paths: list[str]) -> None:
        self.paths = tuple(paths)
        names = [posixpath.basename(p) for p in paths]
        super().__init__(
            f"output {redact(out)}: {len(names)} committed part(s) cannot be read as Parquet "
            f"(truncated or corrupt): {names[:5]}{' ...' if len(names) > 5 else ''}. Their rows cannot be "
            f"counted: `diffedit-batch run <job> --repair` moves them to {UNREADABLE}/ and edits their rows "
            "again"
        )


def is_corrupt(exc: BaseException) -> bool:
    """Whether reading a Parquet file failed because of its bytes (not the storage): Arrow's
    ``ArrowInvalid`` (no magic bytes, 0 bytes, bad data) or an undecodable footer."""
    if isinstance(exc, pa.ArrowInvalid):
        return True
    return isinstance(exc, OSError) and not is_transient(exc) and "thrift" in str(exc).lower()


def read_parts(fs: fsspec.AbstractFileSystem, out: str, columns: list[str] | None = None) -> pa.Table:
    """The committed rows (``columns`` only), with the column ``_file``; empty table if none.
    ``UnreadableParts`` (naming every such file) when a part cannot be read."""
    tables, unreadable = [], []
    for path in part_files(fs, out):
        try:
            pf = parquet_file(fs, path)  # a pyarrow filesystem, never a Python file object
            present = [c for c in columns if c in pf.schema_arrow.names] if columns else None  # older parts
            table = pf.read(columns=present)
        except Exception as exc:
            if not is_corrupt(exc):
                raise
            unreadable.append(path)
            continue
        tables.append(table.append_column("_file", pa.array([path] * table.num_rows, pa.string())))
    if unreadable:
        raise UnreadableParts(out, unreadable)
    if not tables:
        schema = (
            R.OUTPUT_SCHEMA if columns is None else pa.schema([R.OUTPUT_SCHEMA.field(c) for c in columns])
        )
        return schema.append(pa.field("_file", pa.string())).empty_table()
    return pa.concat_tables(tables, promote_options="default")


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any] | None:
    """A small JSON file, or None if it does not exist."""
    fs.invalidate_cache(path)
    try:
        with fs.open(path, "rb") as f:
            return json.loads(f.read().decode())
    except FileNotFoundError:
        return None


def write_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """``data`` written to ``path`` on ``fs`` atomically (``diffedit.loading.files.write_bytes_atomic``,
    the one mechanism: a hidden temporary name beside ``path``, then a rename)."""
    files.write_bytes_atomic(path, data, fs)


def write_json_atomic(fs: fsspec.AbstractFileSystem, path: str, obj: Any) -> None:
    files.write_json_atomic(path, obj, fs)


def exists(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """Whether ``path`` exists now (not in a cached listing)."""
    fs.invalidate_cache(path)
    return fs.exists(path)


def remove(fs: fsspec.AbstractFileSystem, path: str, recursive: bool = False) -> None:
    """Remove ``path`` if it exists."""
    fs.invalidate_cache(path)
    try:
        if fs.exists(path):
            fs.rm(path, recursive=recursive)
    except FileNotFoundError:
        pass


def set_aside_unreadable(fs: fsspec.AbstractFileSystem, out: str) -> list[str]:
    """Move every committed part that cannot be read as Parquet to the state folder's ``unreadable/``
    (out of the readers' way, kept for inspection); the names moved. Their rows are then missing, so the
    next run edits them again."""
    moved = []
    for path in part_files(fs, out):
        try:
            parquet_file(fs, path).read(columns=["id"])
        except Exception as exc:
            if not is_corrupt(exc):
                raise
            target = join(state(out, UNREADABLE), posixpath.basename(path))
            fs.makedirs(state(out, UNREADABLE), exist_ok=True)
            fs.mv(path, target)
            moved.append(posixpath.basename(path))
    return moved


def clear_output(fs: fsspec.AbstractFileSystem, out: str) -> int:
    """Remove what this job writes for ``out`` (its parts, its state folder, what earlier versions left),
    nothing else; the number of parts removed."""
    parts = part_files(fs, out)
    for path in parts:
        fs.rm(path)
    remove(fs, state_dir(out), recursive=True)
    remove_legacy(fs, out)
    return len(parts)


def legacy_state(out: str, name: str) -> str:
    """Where a version that kept its state inside the output folder wrote ``name``: ``<out>/.diffedit/``."""
    return join(out, LEGACY_STATE_DIR, name)


def state_dir_to_read(fs: fsspec.AbstractFileSystem, out: str) -> str:
    """``state_dir(out)``, or the earlier layout's state folder inside the output when only that exists:
    where ``validate`` reads the state (a run first moves it with ``adopt_legacy``; validate writes
    nothing). One check per output, not one per file."""
    if not exists(fs, state_dir(out)) and exists(fs, join(out, LEGACY_STATE_DIR)):
        return join(out, LEGACY_STATE_DIR)
    return state_dir(out)


def adopt_legacy(fs: fsspec.AbstractFileSystem, out: str) -> None:
    """Bring an output written by an earlier version to this layout, keeping its identity and progress:
    the state folder it kept inside the output (``<out>/.diffedit/``: job.json, summary.json, _SUCCESS,
    unreadable/) moves beside it (what the new folder already has wins; staging is dropped). One check
    when there is nothing to move; the markers of still earlier versions among the parts are removed by
    a run that edits (``remove_legacy``), as before."""
    old = join(out, LEGACY_STATE_DIR)
    if exists(fs, old):
        for name in (JOB_FILE, SUMMARY_FILE, SUCCESS_FILE):
            if exists(fs, legacy_state(out, name)) and not exists(fs, state(out, name)):
                fs.makedirs(state_dir(out), exist_ok=True)
                fs.mv(legacy_state(out, name), state(out, name))
        if exists(fs, legacy_state(out, UNREADABLE)):
            for path in fs.find(legacy_state(out, UNREADABLE)):
                fs.makedirs(state(out, UNREADABLE), exist_ok=True)
                fs.mv(path, join(state(out, UNREADABLE), posixpath.basename(path)))
        remove(fs, old, recursive=True)
        log.info("moved the run state of %s from its earlier place inside the folder to %s", redact(out),
                 redact(state_dir(out)))  # fmt: skip


def remove_legacy(fs: fsspec.AbstractFileSystem, out: str) -> None:
    """Remove what earlier versions wrote among the parts: markers, staging, the inner state folder."""
    for name in LEGACY_FILES:
        remove(fs, join(out, name))
    for name in (*LEGACY_DIRS, LEGACY_STATE_DIR):
        remove(fs, join(out, name), recursive=True)


# --------------------------------------------------------------------------- committing


def part_name(ids: Iterable[str]) -> str:
    """``part-<hash>.parquet``, the hash of the sorted ids: the same rows always get the same name."""
    digest = hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:32]
    return f"{PART_PREFIX}{digest}{PART_SUFFIX}"


def commit_table(
    fs: fsspec.AbstractFileSystem, out: str, table: pa.Table, *, run_id: str | None = None
) -> str:
    """Write ``table`` (output schema) as one part: to the state folder's ``staging/``, then renamed into
    the output folder (created if a hand deleted it: the rows it held are missing at the end of the run,
    which the integrity check reports, and a rerun edits them).

    With ``run_id``, the commit happens only while ``job.json`` still names that run
    (``OwnershipLost`` otherwise). Returns the part's path.
    """
    table = table.cast(R.output_schema_with_metadata())
    name = part_name(table.column("id").to_pylist())
    staging = state(out, STAGING)
    tmp = join(staging, f"{name}.{uuid.uuid4().hex}.tmp")
    fs.makedirs(staging, exist_ok=True)
    with fs.open(tmp, "wb") as f:
        f.write(parquet_bytes(table, compression="zstd"))
    if run_id is not None:
        owner = (read_json(fs, state(out, JOB_FILE)) or {}).get("run_id")
        if owner != run_id:
            remove(fs, tmp)
            raise OwnershipLost(
                f"output {redact(out)} is now owned by run {owner}; run {run_id} stopped committing"
            )
    final = join(out, name)
    if is_local_fs(fs):  # object stores have no folders to create
        fs.makedirs(out, exist_ok=True)
    fs.mv(tmp, final)
    return final


@dataclass(frozen=True)
class PartWritten:
    """What one write task committed."""

    files: tuple[str, ...]
    rows: int
    ok: int
    failed: int


def commit_blocks(
    fs: fsspec.AbstractFileSystem,
    out: str,
    tables: Iterable[pa.Table],
    rows_per_file: int,
    run_id: str | None,
) -> PartWritten:
    """Commit the rows of ``tables`` as parts of ``rows_per_file`` rows each (the last one may hold
    fewer): the blocks a write task receives are concatenated first, so small blocks do not make small
    parts. (``pipeline.job`` also re-blocks the stream to ``rows_per_file`` rows before the sink, so every
    write task gets one full part's rows.) A storage error that outlived botocore's retries raises
    ``TransientStorageError`` (one line), which the job's write tasks retry."""
    tables = [t for t in tables if t.num_rows]
    files, rows, ok = [], 0, 0
    if not tables:
        return PartWritten(files=(), rows=0, ok=0, failed=0)
    table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    for start in range(0, table.num_rows, rows_per_file):
        chunk = table.slice(start, rows_per_file)
        try:
            files.append(commit_table(fs, out, chunk, run_id=run_id))
        except OwnershipLost:
            raise
        except Exception as exc:
            rejected = rejected_credentials(exc)
            if rejected is not None:
                raise StorageCredentialsError(
                    credentials_message(f"output {redact(out)}", rejected)
                ) from None
            if not is_transient(exc):
                raise
            # botocore has retried every request with backoff; Ray Data re-runs the write task
            # (``storage.task_retries``), which is safe: the part's name is the hash of its ids.
            raise TransientStorageError(
                f"cannot commit {chunk.num_rows} row(s) to {redact(out)} after retries: {describe(exc)}"
            ) from None
        rows += chunk.num_rows
        ok += sum(1 for s in chunk.column("status").to_pylist() if s == R.OK)
    return PartWritten(files=tuple(files), rows=rows, ok=ok, failed=rows - ok)


def make_datasink(fs: fsspec.AbstractFileSystem, out: str, rows_per_file: int, run_id: str) -> Any:
    """A Ray Data ``Datasink`` committing every block with ``commit_blocks``."""
    from ray.data import Datasink
    from ray.data.block import BlockAccessor

    class CommittingParquetSink(Datasink):
        """Parquet parts, each committed atomically under a name derived from its ids."""

        def __init__(self) -> None:
            self.written: list[PartWritten] = []

        def get_name(self) -> str:
            return "CommitParquet"

        def write(self, blocks: Iterable[Any], ctx: Any) -> PartWritten:
            tables = (BlockAccessor.for_block(b).to_arrow() for b in blocks)
            return commit_blocks(fs, out, tables, rows_per_file, run_id)

        def on_write_complete(self, write_result: Any) -> None:
            self.written = [w for w in write_result.write_returns if w is not None]

    return CommittingParquetSink()


# --------------------------------------------------------------------------- repair


def dedupe(fs: fsspec.AbstractFileSystem, out: str) -> int:
    """Keep one copy of every id committed more than once: an ``ok`` copy over a ``failed`` one, then
    the newest run's (run ids start with their UTC time), then the copy in the first part by name. Two
    copies come from two racing runs, or from ``--retry-failed`` (the failed record and its new one:
    this is how the new record replaces the old, and how a run repairs one that crashed in between).
    Each affected part is rewritten without the dropped rows (new part committed first, old one removed
    after). Returns the number of rows removed."""
    state = read_parts(fs, out, columns=["id", "status", "run_id"])
    ids = state.column("id").to_pylist()
    counts = Counter(ids)
    dupes = {k for k, n in counts.items() if n > 1}
    if not dupes:
        return 0
    copies: dict[str, list[tuple[bool, str, str]]] = {}
    for row_id, status, run, path in zip(
        ids,
        state.column("status").to_pylist(),
        state.column("run_id").to_pylist(),
        state.column("_file").to_pylist(),
        strict=True,
    ):
        if row_id in dupes:
            copies.setdefault(row_id, []).append((status == R.OK, run or "", path))
    drop_by_file: dict[str, set[str]] = {}
    for row_id, found in copies.items():
        best = sorted(found, key=lambda c: (not c[0], _reverse(c[1]), c[2]))[0]
        dropped = list(found)
        dropped.remove(best)
        for _, _, path in dropped:
            drop_by_file.setdefault(path, set()).add(row_id)
    removed = 0
    for path, drop in sorted(drop_by_file.items()):
        table = read_parquet(fs, path)
        keep = pa.array([i not in drop for i in table.column("id").to_pylist()])
        kept = table.filter(keep)
        if kept.num_rows == table.num_rows:
            continue
        removed += table.num_rows - kept.num_rows
        if kept.num_rows:
            commit_table(fs, out, kept)
        fs.rm(path)
    log.warning("removed %d duplicate row(s) from %d part(s) of %s", removed, len(drop_by_file), out)
    return removed


def _reverse(text: str) -> tuple[int, ...]:
    """A sort key that orders strings from the largest down (the newest run id first)."""
    return (*(-ord(ch) for ch in text), 1)

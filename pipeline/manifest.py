"""The input manifest: Parquet files of (id, image, caption, query) rows.

Columns (see README.md, "The batch job"):

=================  ==========================  ===============================================
column             type                        meaning
=================  ==========================  ===============================================
``id``             string, required, unique    the row's key; appears exactly once in the output
``image``          string                      a URI: local path, ``file://``, ``s3://``,
                                               ``gs://``, ``https://`` (one of image/image_bytes)
``image_bytes``    binary                      the encoded image itself
``caption``        string, optional            the reference text R; null or "" = empty prompt
``query``          string, required            the edit text Q (an empty one fails the row)
``seed``           integer, optional           null: derived from the id (``default_seed``)
EditParams fields  int / float / string        per-row overrides of the job's ``params``;
                                               null = the job's value
=================  ==========================  ===============================================

Other columns are ignored (``validate`` lists them). Input paths may be files, globs or prefixes;
prefixes are searched recursively for ``*.parquet`` (so hive-partitioned folders work), skipping
names that start with ``_`` or ``.`` (Spark/Hive markers and temporary files).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_type_hints

import fsspec
import pyarrow as pa

from diffedit.params import EditParams
from pipeline.config import ConfigError, StorageConfig
from pipeline.faults import credentials_message, rejected_credentials
from pipeline.storage import filesystem, is_local_fs, parquet_file, protocol_of, redact, scheme_of

ID, IMAGE, IMAGE_BYTES, CAPTION, QUERY, SEED = "id", "image", "image_bytes", "caption", "query", "seed"
OVERRIDE_COLUMNS: tuple[str, ...] = EditParams.field_names()
KNOWN_COLUMNS: tuple[str, ...] = (ID, IMAGE, IMAGE_BYTES, CAPTION, QUERY, SEED, *OVERRIDE_COLUMNS)
MAX_SEED = 2**63 - 1


class ManifestError(ValueError):
    """The input as a whole is unusable: no files, a wrong schema, null or duplicate ids."""

    retryable = False


class ManifestStorageError(ManifestError):
    """The input's storage could not be reached or listed (endpoint down, timeout): not a property of
    the input, so a later attempt may succeed (exit 1, not 3)."""

    retryable = True


@dataclass(frozen=True)
class ManifestInfo:
    """What ``inspect_manifest`` found."""

    files: tuple[str, ...]  # fsspec paths (no scheme)
    num_rows: int
    columns: tuple[str, ...]  # known columns present in at least one file
    ignored_columns: tuple[str, ...]
    ids: pa.Array | None  # every id (string), when read


def default_seed(row_id: str) -> int:
    """The seed of a row without one: the first 8 bytes of sha256(id), as a non-negative int64, so a
    row's result does not depend on where it sits in the manifest."""
    return int.from_bytes(hashlib.sha256(row_id.encode()).digest()[:8], "little") & MAX_SEED


# --------------------------------------------------------------------------- files


def resolve_files(
    paths: Sequence[str], storage: StorageConfig
) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """Expand files, globs and prefixes into a sorted list of Parquet files on one filesystem."""
    if not paths:
        raise ManifestError("input.paths is empty")
    schemes = {scheme_of(p) if scheme_of(p) != "local" else "file" for p in paths}
    if len(schemes) > 1:
        raise ManifestError(f"input.paths mix filesystems ({sorted(schemes)}); use one per job")
    fs = None
    found: list[str] = []
    for i, uri in enumerate(paths):
        fs, path = filesystem(uri, storage)
        try:
            if any(c in path for c in "*?["):
                matches = [m for m in fs.glob(path) if m.endswith(".parquet") and fs.isfile(m)]
                if not matches:
                    raise ManifestError(f"input.paths[{i}]: {uri}: no Parquet file matches this glob")
            elif fs.isdir(path):
                matches = [m for m in fs.find(path) if _is_data_file(m[len(path.rstrip("/")) :])]
                if not matches:
                    raise ManifestError(f"input.paths[{i}]: {uri}: no Parquet file under this prefix")
            elif fs.isfile(path):
                matches = [path]
            else:
                raise ManifestError(f"input.paths[{i}]: {uri}: no such file or prefix")
        except ManifestError:
            raise
        except FileNotFoundError:
            raise ManifestError(f"input.paths[{i}]: {uri}: no such file or prefix") from None
        except Exception as exc:  # connection refused, timeouts, throttling: the storage, not the input
            if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
                raise ConfigError(
                    f"input.paths[{i}]: {uri}: no storage credentials in the environment "
                    f"({type(exc).__name__}: {exc})"
                ) from None
            rejected = rejected_credentials(exc)
            if rejected is not None:
                raise ConfigError(credentials_message(f"input.paths[{i}]: {redact(uri)}", rejected)) from None
            raise ManifestStorageError(
                f"input.paths[{i}]: {uri}: cannot list: {type(exc).__name__}: {exc}"
            ) from None
        found.extend(matches)
    assert fs is not None
    return fs, sorted(dict.fromkeys(found))


def _is_data_file(relative: str) -> bool:
    parts = [p for p in relative.split("/") if p]
    return bool(parts) and parts[-1].endswith(".parquet") and not any(p.startswith(("_", ".")) for p in parts)


# --------------------------------------------------------------------------- schema


def _override_kinds() -> dict[str, str]:
    from pipeline.rows import param_kind

    hints = get_type_hints(EditParams)
    return {name: param_kind(hints[name]) for name in OVERRIDE_COLUMNS}


OVERRIDE_KINDS = _override_kinds()


def check_schema(schema: pa.Schema, where: str) -> list[str]:
    """Problems with one file's schema (empty when it is a valid manifest schema)."""
    problems = []
    names = set(schema.names)

    def is_str(t: pa.DataType) -> bool:
        return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)

    def is_bin(t: pa.DataType) -> bool:
        return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)

    for required in (ID, QUERY):
        if required not in names:
            problems.append(f"{where}: required column {required!r} is missing (columns: {schema.names})")
    if IMAGE not in names and IMAGE_BYTES not in names:
        problems.append(f"{where}: needs an {IMAGE!r} (URI) or {IMAGE_BYTES!r} (binary) column")
    expected = {
        ID: "string",
        IMAGE: "string",
        CAPTION: "string",
        QUERY: "string",
        IMAGE_BYTES: "binary",
        SEED: "int",
    }
    expected.update(OVERRIDE_KINDS)
    for name, kind in expected.items():
        if name not in names:
            continue
        t = schema.field(name).type
        if pa.types.is_null(t) and name != ID:
            continue  # an all-null optional column
        ok = {
            "string": is_str(t),
            "str": is_str(t),
            "binary": is_bin(t),
            "int": pa.types.is_integer(t),
            "float": pa.types.is_integer(t) or pa.types.is_floating(t),
            "bool": pa.types.is_boolean(t),
        }[kind]
        if not ok:
            want = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(kind, kind)
            problems.append(f"{where}: column {name!r} must be {want}, got {t}")
    return problems


# --------------------------------------------------------------------------- inspection


def inspect_manifest(paths: Sequence[str], storage: StorageConfig, *, read_ids: bool = True) -> ManifestInfo:
    """Check every file's schema, count rows and (``read_ids``) read the ids: a null, empty or
    duplicate id is a ``ManifestError``. Reads only Parquet footers and the ``id`` column."""
    fs, files = resolve_files(paths, storage)
    problems: list[str] = []
    columns: set[str] = set()
    num_rows = 0
    id_chunks = []
    for path in files:
        shown = _display(fs, path)
        try:
            pf = parquet_file(fs, path)  # a pyarrow filesystem, never a Python file object
            schema = pf.schema_arrow
            num_rows += pf.metadata.num_rows
            file_problems = check_schema(schema, shown)
            problems.extend(file_problems)
            columns.update(schema.names)
            if read_ids and not file_problems:
                id_chunks.append(pf.read(columns=[ID]).column(ID).cast(pa.string()))
        except (OSError, pa.ArrowException) as exc:
            problems.append(f"{shown}: not a readable Parquet file: {exc}")
    if problems:
        raise ManifestError("invalid manifest:\n  " + "\n  ".join(problems))
    ids = None
    if read_ids:
        ids = (
            pa.chunked_array(id_chunks, type=pa.string()).combine_chunks()
            if id_chunks
            else pa.array([], pa.string())
        )
        check_ids(ids)
    known = tuple(c for c in KNOWN_COLUMNS if c in columns)
    ignored = tuple(sorted(columns - set(KNOWN_COLUMNS)))
    return ManifestInfo(
        files=tuple(files), num_rows=num_rows, columns=known, ignored_columns=ignored, ids=ids
    )


def check_ids(ids: pa.Array) -> None:
    """A null, empty or duplicate id makes the manifest unusable: say which."""
    nulls = ids.null_count
    if nulls:
        raise ManifestError(f"invalid manifest: {nulls} row(s) have a null id")
    values = ids.to_pylist()
    empty = sum(1 for v in values if v == "")
    if empty:
        raise ManifestError(f"invalid manifest: {empty} row(s) have an empty id")
    duplicates = duplicate_ids(values)
    if duplicates:
        shown = ", ".join(repr(d) for d in duplicates[:10])
        more = f" and {len(duplicates) - 10} more" if len(duplicates) > 10 else ""
        raise ManifestError(f"invalid manifest: {len(duplicates)} duplicate id(s): {shown}{more}")


def duplicate_ids(values: Sequence[str]) -> list[str]:
    """Ids that occur more than once, sorted."""
    return sorted(k for k, n in Counter(values).items() if n > 1)


def _display(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return path if is_local_fs(fs) else f"{protocol_of(fs)}://{path}"


__all__ = [
    "KNOWN_COLUMNS",
    "OVERRIDE_COLUMNS",
    "ManifestError",
    "ManifestInfo",
    "ManifestStorageError",
    "check_ids",
    "check_schema",
    "default_seed",
    "inspect_manifest",
    "resolve_files",
]

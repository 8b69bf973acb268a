"""Filesystems for URIs: local paths, ``file://``, ``s3://`` (S3-compatible endpoints), ``gs://``,
``http(s)://``, all through fsspec, with the job's storage options.

Credentials are never passed here: s3fs/botocore read them from the environment (or an instance
role), so they never appear in a config, a log line or the output's metadata.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import fsspec

from diffedit.loading.urls import redact_url
from pipeline.config import StorageConfig


class StorageError(RuntimeError):
    """Storage could not be reached, listed or read (endpoint down, timeout, throttling): not a property
    of the job or its data, so a later attempt may succeed (exit code 1)."""


#: Schemes the job can read and write (reading images: all; manifests and outputs: all but http).
REMOTE_SCHEMES = ("s3", "s3a", "gs", "gcs", "http", "https")


def scheme_of(uri: str) -> str:
    """``s3://b/k`` -> ``s3``; a local path (or ``file://``) -> ``file``."""
    if "://" not in uri:
        return "file"
    return uri.split("://", 1)[0].lower()


def is_local(uri: str) -> bool:
    return scheme_of(uri) in ("file", "local")


def normalize_uri(uri: str) -> str:
    """A canonical form used for prefix checks and the output: local paths become absolute paths
    (``..`` resolved), ``file://`` is dropped, and remote keys are normalised (``a/../b`` -> ``b``)."""
    scheme = scheme_of(uri)
    if scheme in ("file", "local"):
        path = uri.split("://", 1)[1] if "://" in uri else uri
        return os.path.abspath(os.path.expanduser(path))
    parts = urlsplit(uri)
    path = parts.path
    if path:
        trailing = path.endswith("/")
        path = posixpath.normpath(path)
        if path == ".":
            path = ""
        if trailing and not path.endswith("/"):
            path += "/"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def storage_options(scheme: str, storage: StorageConfig) -> dict[str, Any]:
    """fsspec keyword arguments for ``scheme``: endpoint, region and anonymous access for S3."""
    if scheme in ("s3", "s3a"):
        options: dict[str, Any] = {"config_kwargs": botocore_config(storage)}
        if storage.endpoint_url:
            options["endpoint_url"] = storage.endpoint_url
        if storage.region:
            options["client_kwargs"] = {"region_name": storage.region}
        if storage.anonymous:
            options["anon"] = True
        return options
    if scheme in ("gs", "gcs") and storage.anonymous:
        return {"token": "anon"}
    return {}


def botocore_config(storage: StorageConfig) -> dict[str, Any]:
    """``botocore.client.Config`` arguments (s3fs's ``config_kwargs``): retries of transient errors with
    exponential backoff and jitter, and the timeouts after which an attempt counts as failed.

    botocore retries connection errors, connect/read timeouts, 5xx and throttling (``SlowDown``) in its
    "standard" and "adaptive" modes (adaptive also slows the client down while throttled); s3fs retries
    read timeouts once more on top. What still fails is classified by ``pipeline.faults``."""
    return {
        "retries": {"mode": storage.retry_mode, "max_attempts": storage.max_attempts},
        "connect_timeout": storage.connect_timeout,
        "read_timeout": storage.read_timeout,
    }


def filesystem(uri: str, storage: StorageConfig) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path to use with it (no scheme; absolute if local)."""
    scheme = scheme_of(uri)
    if scheme in ("file", "local"):
        return fsspec.filesystem("file"), normalize_uri(uri)
    try:
        fs = fsspec.filesystem("s3" if scheme == "s3a" else scheme, **storage_options(scheme, storage))
    except (ImportError, ValueError) as exc:
        raise ValueError(f"cannot open {scheme}:// URIs ({uri}): {exc}") from None
    return fs, fs._strip_protocol(uri)


def join(base: str, *names: str) -> str:
    """Join path parts with ``/`` (for fsspec paths, local or remote)."""
    out = base.rstrip("/")
    for name in names:
        out = f"{out}/{name.strip('/')}"
    return out


def redact(uri: str) -> str:
    """``uri`` without user info or query string (``s3://user:pw@b/k?sig=...`` -> ``s3://b/k``): the
    library's ``redact_url`` (the one redactor) with the query dropped."""
    return redact_url(uri, keep_query=False)


def protocol_of(fs: fsspec.AbstractFileSystem) -> str:
    """The main protocol of ``fs`` (``file``, ``s3``, ...)."""
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


def is_local_fs(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` is the local disk (folders exist there; a rename is atomic)."""
    return protocol_of(fs) in ("file", "local")


def arrow_filesystem(fs: fsspec.AbstractFileSystem) -> Any:
    """The pyarrow filesystem over ``fs``: Arrow's own ``LocalFileSystem`` for local paths, else
    ``PyFileSystem(FSSpecHandler(fs))``.

    Everything that reads or writes Parquet goes through this (``read_parquet``, ``write_parquet``),
    never through a Python file object: Arrow reading from ``fs.open(...)`` handles can abort
    (``terminate called without an active exception``, exit 134) or hang at interpreter exit (Arrow
    issues 33975, 34314, 50482).
    """
    import pyarrow.fs as pafs

    if is_local_fs(fs):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def read_parquet(fs: fsspec.AbstractFileSystem, path: str, columns: list[str] | None = None) -> Any:
    """One Parquet file (``columns`` only) as a ``pyarrow.Table``, read through ``arrow_filesystem``."""
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=columns, filesystem=arrow_filesystem(fs), partitioning=None)


def parquet_file(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    """A ``pyarrow.parquet.ParquetFile`` (footer read, columns on demand), through ``arrow_filesystem``."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path, filesystem=arrow_filesystem(fs))


def parquet_bytes(table: Any, **options: Any) -> bytes:
    """``table`` encoded as a Parquet file, in memory (an Arrow buffer, not a Python file object)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **options)
    return sink.getvalue().to_pybytes()

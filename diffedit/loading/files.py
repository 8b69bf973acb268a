"""Small local-file helpers of the loaders: atomic JSON writes, file locks, sizes, listings."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import posixpath
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec

__all__ = ["file_size", "flock", "list_local", "write_bytes_atomic", "write_json_atomic"]


def list_local(root: Path) -> set[str]:
    """Posix paths, relative to ``root``, of every file below it; hidden files and folders skipped."""
    files = set()
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        relative = Path(directory).relative_to(root)
        files.update((relative / name).as_posix() for name in names if not name.startswith("."))
    return files


def write_bytes_atomic(path: str | Path, data: bytes, fs: fsspec.AbstractFileSystem | None = None) -> None:
    """Write ``data`` to a hidden temporary name beside ``path``, then rename it to ``path``: a reader
    sees the old file or the new one, never part of one (a local rename is atomic; on S3 the object
    appears whole). ``fs``: an fsspec filesystem and a path on it (default: the local disk). The one
    atomic write of the project (``pipeline.output`` uses it for the output's markers)."""
    fs = fs or fsspec.filesystem("file")
    path = str(path)
    parent, name = posixpath.split(path)
    tmp = posixpath.join(parent, f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fs.makedirs(parent, exist_ok=True)
    try:
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            if fs.exists(tmp):
                fs.rm(tmp)


def write_json_atomic(path: str | Path, obj: Any, fs: fsspec.AbstractFileSystem | None = None) -> None:
    """``obj`` as indented JSON (sorted keys), written with ``write_bytes_atomic``."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), fs)


def file_size(path: Path) -> int | None:
    """The size of ``path`` in bytes, or None when it cannot be read."""
    try:
        return path.stat().st_size
    except OSError:
        return None


@contextlib.contextmanager
def flock(path: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold ``fcntl.flock`` on ``path`` (created if missing): exclusive or shared.

    Shared mode is the point: many actors read a synced model copy at once while a re-sync waits for
    them (``load.py``), and a re-sync excludes everyone (``cache.py``). ``filelock.FileLock`` (already
    installed, through huggingface_hub) is exclusive only, and its ``ReadWriteLock`` (4.x) is an SQLite
    database whose holds are per thread and may not change mode, which is more machinery than these
    six lines of a POSIX call the kernel releases when a process dies (issue 20 item 13: weighed, kept).
    """
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

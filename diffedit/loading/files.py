"""Small local-file helpers of the loaders: atomic JSON writes, file locks, sizes, listings."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["file_size", "flock", "list_local", "write_json_atomic"]


def list_local(root: Path) -> set[str]:
    """Posix paths, relative to ``root``, of every file below it; hidden files and folders skipped."""
    files = set()
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        relative = Path(directory).relative_to(root)
        files.update((relative / name).as_posix() for name in names if not name.startswith("."))
    return files


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=1) + "\n")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def file_size(path: Path) -> int | None:
    """The size of ``path`` in bytes, or None when it cannot be read."""
    try:
        return path.stat().st_size
    except OSError:
        return None


@contextlib.contextmanager
def flock(path: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold ``fcntl.flock`` on ``path`` (created if missing): exclusive or shared."""
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

"""``weights_sha256``: one hash over a model's weight files, remembered next to them."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path

from diffedit.loading.files import write_json_atomic

__all__ = ["HASH_SIDECAR_NAME", "weights_sha256"]

log = logging.getLogger(__name__)

HASH_SIDECAR_NAME = ".diffedit_weights_sha256"
_CHUNK = 8 << 20


def weights_sha256(root: str | Path, rel_paths: Iterable[str]) -> str:
    """sha256 (hex) over the weight files ``rel_paths`` (relative to ``root``), in sorted order.

    For each file, in order: the length of its relative posix path (8-byte big-endian), the path (UTF-8),
    the file's size (8-byte big-endian), then its bytes, read in chunks. The result is remembered in ``root/.diffedit_weights_sha256``
    keyed by the (path, size, mtime_ns) list, and reused while that key matches; when ``root`` is not
    writable nothing is remembered.
    """
    root = Path(root)
    rels = sorted(set(rel_paths))
    key = []
    for rel in rels:
        stat = (root / rel).stat()
        key.append([rel, stat.st_size, stat.st_mtime_ns])
    sidecar = root / HASH_SIDECAR_NAME
    with contextlib.suppress(OSError, ValueError):
        cached = json.loads(sidecar.read_text())
        if cached.get("files") == key and isinstance(cached.get("sha256"), str):
            return cached["sha256"]

    digest = hashlib.sha256()
    for rel, size, _ in key:
        name = rel.encode("utf-8")
        digest.update(len(name).to_bytes(8, "big") + name + size.to_bytes(8, "big"))
        with open(root / rel, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    result = digest.hexdigest()
    try:
        write_json_atomic(sidecar, {"files": key, "sha256": result})
    except OSError as error:  # read-only model directory: just don't remember
        log.debug("not caching the weights hash in %s: %s", sidecar, error)
    return result

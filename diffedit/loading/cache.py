"""The local cache of remote model directories (``s3://``, ``gs://``, ``memory://`` ... any fsspec URL).

The cache (``cache_dir``; default ``$DIFFEDIT_CACHE``, else ``~/.cache/diffedit-batch/models``) holds, per
remote directory::

    <name>-<hash>/                        the synced copy, with its manifest .diffedit_manifest.json
    <name>-<hash>.lock                    flock: exclusive while syncing, shared while loading
    .tmp-<name>-<hash>-<pid>-<random>/    a sync in progress; renamed into place once complete

``<hash>`` is a hash of the URL (credentials stripped) and the endpoint. The manifest is the fingerprint
of the remote listing: relative path, size, and ETag or mtime when the filesystem gives one. Every load
lists the remote again; an unchanged fingerprint reuses the copy without downloading, a changed one
re-syncs, fetching only the files whose entry changed. Several processes (Ray actors on one node) may load
the same URL at once: one syncs under the exclusive lock, the others wait, then find the copy current.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from diffedit.loading.errors import ModelSourceError
from diffedit.loading.files import file_size, flock, write_json_atomic
from diffedit.loading.layout import check_layout, wanted
from diffedit.loading.urls import redact_url

__all__ = ["MANIFEST_NAME", "CacheSync", "default_cache_dir", "sync_to_cache"]

log = logging.getLogger(__name__)

MANIFEST_NAME = ".diffedit_manifest.json"
# Listing keys that identify a version of a remote file, most specific first.
_VERSION_KEYS = (
    "ETag",
    "etag",
    "md5Hash",
    "blob_id",
    "generation",
    "VersionId",
    "mtime",
    "LastModified",
    "last_modified",
    "updated",
    "modified",
    "created",
)


def default_cache_dir() -> Path:
    """``$DIFFEDIT_CACHE`` when set, else ``~/.cache/diffedit-batch/models``."""
    configured = os.environ.get("DIFFEDIT_CACHE")
    return (
        Path(configured).expanduser() if configured else Path.home() / ".cache" / "diffedit-batch" / "models"
    )


@dataclass(frozen=True)
class CacheSync:
    """What ``sync_to_cache`` did."""

    path: Path  # the synced model directory in the cache
    lock_path: Path  # its lock file (held shared while loading from ``path``)
    downloaded: tuple[str, ...]  # files fetched from the remote by this call (relative paths)
    reused: tuple[str, ...]  # files kept from the cached copy (unchanged remote entries)


def sync_to_cache(
    url: str,
    *,
    cache_dir: str | Path | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> CacheSync:
    """Bring the local copy of the remote model directory ``url`` up to date, and say what was fetched.

    Lists the remote (``storage_options`` go to the fsspec filesystem, e.g. s3fs's ``endpoint_url``,
    ``key``, ``secret``, ``client_kwargs``), checks the layout there, and, under an exclusive lock, either
    finds the cached copy's manifest equal to the listing (nothing is downloaded) or builds a new copy in
    a temp folder (unchanged files hard-linked from the old copy, the others downloaded), then renames it
    into place. Only the files in ``FILE_PATTERNS`` are fetched. Credentials are never logged or stored.
    """
    import fsspec.core

    shown = redact_url(url)
    options = dict(storage_options or {})
    try:
        fs, root = fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError) as error:
        raise ModelSourceError(f"{shown}: cannot open with fsspec: {error}") from error
    root = root.rstrip("/")
    listing = _list_remote(fs, root, shown)

    def read_json(rel: str) -> Any:
        return json.loads(fs.cat_file(f"{root}/{rel}"))

    check_layout(listing.keys(), read_json, shown)
    entries = [[rel, *listing[rel]] for rel in sorted(listing) if wanted(rel)]

    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache_root.mkdir(parents=True, exist_ok=True)
    name = _cache_name(shown, options)
    final = cache_root / name
    lock_path = cache_root / f"{name}.lock"
    with flock(lock_path, exclusive=True):
        previous = _read_manifest(final)
        if previous == entries and all(file_size(final / rel) == size for rel, size, _ in entries):
            log.info("%s: cached copy %s is current", shown, final)
            return CacheSync(final, lock_path, (), tuple(rel for rel, _, _ in entries))
        for stale in [*cache_root.glob(f".tmp-{name}-*"), *cache_root.glob(f".old-{name}-*")]:
            shutil.rmtree(stale, ignore_errors=True)  # left by a process that died mid-sync
        tmp = cache_root / f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            downloaded, reused = _fill(fs, root, shown, final, tmp, entries, previous or [])
            write_json_atomic(tmp / MANIFEST_NAME, {"source": shown, "files": entries})
            if final.exists():
                old = cache_root / f".old-{name}-{uuid.uuid4().hex[:8]}"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return CacheSync(final, lock_path, tuple(downloaded), tuple(reused))


def _list_remote(fs: Any, root: str, shown: str) -> dict[str, tuple[int, str | None]]:
    """relative path -> (size, version or None) for every file under ``root``; hidden files skipped."""
    fs.invalidate_cache(root)  # fsspec caches listings per instance; the remote may have changed
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        found = {}
    except OSError as error:
        raise ModelSourceError(f"{shown}: cannot list the remote directory: {error}") from error
    listing: dict[str, tuple[int, str | None]] = {}
    prefix = f"{root}/"
    for path, info in found.items():
        if info.get("type", "file") != "file" or not path.startswith(prefix):
            continue
        rel = path[len(prefix) :]
        parts = PurePosixPath(rel).parts
        if any(part in ("", ".", "..") for part in parts) or rel.startswith("/"):
            raise ModelSourceError(f"{shown}: refusing a listed path that escapes the directory: {rel!r}")
        if any(part.startswith(".") for part in parts):
            continue
        version = next((info[k] for k in _VERSION_KEYS if info.get(k) is not None), None)
        listing[rel] = (int(info["size"]), None if version is None else str(version))
    return listing


def _fill(
    fs: Any,
    root: str,
    shown: str,
    final: Path,
    tmp: Path,
    entries: list[list[Any]],
    previous: list[list[Any]],
) -> tuple[list[str], list[str]]:
    """Populate ``tmp`` with ``entries``: link unchanged files from ``final``, download the rest."""
    before = {rel: (size, version) for rel, size, version in previous}
    downloaded: list[str] = []
    reused: list[str] = []
    for rel, size, version in entries:
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        old = final / rel
        # Without a version (ETag/mtime) a same-size file may still have changed: fetch it again.
        if version is not None and before.get(rel) == (size, version) and file_size(old) == size:
            try:
                os.link(old, target)
            except OSError:
                shutil.copy2(old, target)
            reused.append(rel)
        else:
            downloaded.append(rel)
    if downloaded:
        fetch = set(downloaded)
        total = sum(size for rel, size, _ in entries if rel in fetch)
        log.info("%s: downloading %d files (%d bytes) into the cache", shown, len(downloaded), total)
        fs.get([f"{root}/{rel}" for rel in downloaded], [str(tmp / rel) for rel in downloaded])
    sizes = {rel: size for rel, size, _ in entries}
    for rel in downloaded:
        got = file_size(tmp / rel)
        if got != sizes[rel]:
            raise ModelSourceError(
                f"{shown}/{rel}: expected {sizes[rel]} bytes, got {got}: did it change during the download? Retry."
            )
    return downloaded, reused


def _cache_name(shown_url: str, options: Mapping[str, Any]) -> str:
    """``<last path part>-<hash of the credential-free URL and the endpoint>``, filesystem-safe."""
    client_kwargs = options.get("client_kwargs") or {}
    endpoint = options.get("endpoint_url") or client_kwargs.get("endpoint_url")
    key = json.dumps(
        {"url": shown_url.rstrip("/"), "endpoint": redact_url(str(endpoint)) if endpoint else None}
    )
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    base = posixpath.basename(urlsplit(shown_url.split("::")[-1]).path.rstrip("/"))
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip(".")[:48] or "model"
    return f"{base}-{digest}"


def _read_manifest(directory: Path) -> list[list[Any]] | None:
    try:
        files = json.loads((directory / MANIFEST_NAME).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return files if isinstance(files, list) else None

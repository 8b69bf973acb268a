"""Loading a Stable-Diffusion-layout model into a ``ModelBundle``: local directories, fsspec URLs, hub ids.

``load_bundle(source)`` reads ``source`` by its shape:

* a local directory, or a ``file://`` URL to one: a diffusers Stable Diffusion directory, i.e.
  ``model_index.json`` and the ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/`` and ``scheduler/``
  subfolders (SD 1.x and 2.x);
* any other fsspec URL (``s3://``, ``gs://``, ``memory://``, ``simplecache::s3://`` ...): the directory is
  synced into a local cache (``sync_to_cache``) and loaded from there;
* ``org/name`` that is not an existing path: a Hugging Face Hub repository (``snapshot_download``).

The layout is checked before anything heavy is read, and each error names what is missing. Weights are
read from safetensors files only: a component that has only pickle checkpoints (``*.bin``, ``*.ckpt``,
``*.pt``, ``*.pth``) is refused with ``UnsafeWeightsError``; nothing here ever unpickles.

The cache of remote models (``cache_dir``; default ``$DIFFEDIT_CACHE``, else
``~/.cache/diffedit-batch/models``) holds, per remote directory::

    <name>-<hash>/                        the synced copy, with its manifest .diffedit_manifest.json
    <name>-<hash>.lock                    flock: exclusive while syncing, shared while loading
    .tmp-<name>-<hash>-<pid>-<random>/    a sync in progress; renamed into place once complete

``<hash>`` is a hash of the URL (credentials stripped) and the endpoint. The manifest is the fingerprint
of the remote listing: relative path, size, and ETag or mtime when the filesystem gives one. Every load
lists the remote again; an unchanged fingerprint reuses the copy without downloading, a changed one
re-syncs, fetching only the files whose entry changed. Several processes (Ray actors on one node) may load
the same URL at once: one syncs under the exclusive lock, the others wait, then find the copy current.

``weights_hash`` is the sha256 of the loaded safetensors files (``weights_sha256``), remembered in a sidecar
file ``.diffedit_weights_sha256`` next to them so that a second load of a large model does not rehash it.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from urllib.request import url2pathname

if TYPE_CHECKING:  # torch is imported where a model is loaded: checking a layout or hashing needs none
    import torch

    from diffedit.bundle import ModelBundle

__all__ = [
    "CacheSync",
    "ModelLayoutError",
    "ModelSourceError",
    "UnsafeWeightsError",
    "check_layout",
    "default_cache_dir",
    "load_bundle",
    "redact_url",
    "resolve_dtype",
    "sync_to_cache",
    "weights_sha256",
]

log = logging.getLogger(__name__)

#: The subfolders a Stable Diffusion directory must have, as named in model_index.json.
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
#: The config file each component must have (the tokenizer is checked separately).
CONFIG_FILES = {
    "unet": "config.json",
    "vae": "config.json",
    "text_encoder": "config.json",
    "scheduler": "scheduler_config.json",
}
#: Weight file stems: diffusers saves ``<stem>.safetensors`` or shards ``<stem>-0000i-of-0000n.safetensors``
#: with ``<stem>.safetensors.index.json``; transformers the same with stem ``model``.
WEIGHT_STEMS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
#: The files a load needs (fnmatch patterns over paths relative to the model root): configs and tokenizer
#: files, and the non-variant safetensors weights. Pickle weights and variants (``.fp16.safetensors``)
#: never match.
FILE_PATTERNS: tuple[str, ...] = (
    "model_index.json",
    *(f"{component}/*.json" for component in COMPONENTS),
    "tokenizer/*.txt",
    *(f"{component}/{stem}.safetensors" for component, stem in WEIGHT_STEMS.items()),
    *(f"{component}/{stem}-*.safetensors" for component, stem in WEIGHT_STEMS.items()),
)
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")
MANIFEST_NAME = ".diffedit_manifest.json"
HASH_SIDECAR_NAME = ".diffedit_weights_sha256"

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}
# A Hugging Face repo id: "org/name", letters, digits, '-', '_', '.'.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# Query parameters whose values are credentials (presigned URLs, SAS tokens, API keys).
_SECRET_QUERY_KEY = re.compile(r"token|key|secret|signature|sig|credential|password|auth", re.IGNORECASE)
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
_CHUNK = 8 << 20


# --------------------------------------------------------------------------------------------- errors
class ModelLayoutError(ValueError):
    """``where`` is not a loadable diffusers Stable Diffusion directory; ``problems`` names each gap."""

    def __init__(self, where: str, problems: list[str]) -> None:
        self.where = where
        self.problems = list(problems)
        super().__init__(f"{where}: not a loadable Stable Diffusion directory: " + "; ".join(self.problems))


class UnsafeWeightsError(ValueError):
    """A component has only pickle checkpoints, which are refused: unpickling can run arbitrary code."""


class ModelSourceError(OSError):
    """The source cannot be reached or does not exist: no such path, hub unreachable, listing failed."""


# --------------------------------------------------------------------------------------------- dtype
def resolve_dtype(device: str | torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """The torch dtype to load in on ``device``.

    ``None`` means float16 on CUDA and float32 elsewhere. Strings: "float32"/"fp32", "float16"/"fp16",
    "bfloat16"/"bf16" (an optional "torch." prefix is allowed). float16 on CPU is refused (bfloat16 is
    allowed): CPU float16 kernels are missing or slow and the result would differ from a GPU run.
    """
    import torch

    device = torch.device(device)
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        name = dtype.strip().lower().removeprefix("torch.")
        if name not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}: expected one of {sorted(_DTYPES)}")
        resolved = getattr(torch, _DTYPES[name])
    elif isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(
                f"unsupported dtype {dtype}: expected torch.float32, torch.float16 or torch.bfloat16"
            )
        resolved = dtype
    else:
        raise TypeError(f"dtype must be a string, a torch.dtype or None, got {type(dtype).__name__}")
    if resolved == torch.float16 and device.type == "cpu":
        raise ValueError(
            "float16 on CPU is refused (missing or very slow kernels): use float32 or bfloat16 on CPU"
        )
    return resolved


# --------------------------------------------------------------------------------------------- layout
def check_layout(
    files: Collection[str], read_json: Callable[[str], Any], where: str
) -> dict[str, tuple[str, ...]]:
    """Check a diffusers Stable Diffusion layout from its file list, before anything heavy is read.

    ``files``: every file's path relative to the model root, posix-style ("unet/config.json").
    ``read_json(rel)``: the parsed content of one of them (only small JSON files are asked for).
    ``where``: how errors name the directory.

    Returns the safetensors files each weighted component (unet, vae, text_encoder) loads. Raises
    ``UnsafeWeightsError`` when a component has only pickle checkpoints, else ``ModelLayoutError``
    listing every missing piece.
    """
    files = set(files)
    if "model_index.json" not in files:
        raise ModelLayoutError(
            where, ["model_index.json missing (not a diffusers Stable Diffusion directory)"]
        )
    index = _read_json_checked(read_json, "model_index.json", where)
    if not isinstance(index, dict):
        raise ModelLayoutError(where, ["model_index.json is not a JSON object"])

    problems: list[str] = []
    unsafe: list[str] = []
    weights: dict[str, tuple[str, ...]] = {}
    for component in COMPONENTS:
        entry = index.get(component)
        if not isinstance(entry, (list, tuple)) or len(entry) != 2 or entry[1] is None:
            problems.append(f"model_index.json has no {component!r} entry")
        config = CONFIG_FILES.get(component, "tokenizer.json")
        if not any(rel.startswith(f"{component}/") for rel in files):
            problems.append(f"{component}/ missing or empty (needs {component}/{config})")
            continue
        if component in CONFIG_FILES and f"{component}/{config}" not in files:
            problems.append(f"{component}/{config} missing")
        if component == "tokenizer" and not (
            "tokenizer/tokenizer.json" in files or {"tokenizer/vocab.json", "tokenizer/merges.txt"} <= files
        ):
            problems.append("tokenizer/ has neither tokenizer.json nor vocab.json + merges.txt")
        if component in WEIGHT_STEMS:
            found = _weight_files(component, files, read_json, where, problems, unsafe)
            if found:
                weights[component] = found
    if unsafe:
        raise UnsafeWeightsError(
            f"{where}: pickle checkpoints are refused (loading them can execute arbitrary code), and "
            + "; ".join(unsafe)
            + ". Convert them to safetensors in a trusted environment, e.g. "
            "Model.from_pretrained(dir, use_safetensors=False).save_pretrained(dir, safe_serialization=True), "
            "or use a repository that ships *.safetensors"
        )
    if problems:
        raise ModelLayoutError(where, problems)
    return weights


def _weight_files(
    component: str,
    files: set[str],
    read_json: Callable[[str], Any],
    where: str,
    problems: list[str],
    unsafe: list[str],
) -> tuple[str, ...]:
    """The safetensors files ``component`` loads; appends to ``problems`` / ``unsafe`` when there are none."""
    stem = WEIGHT_STEMS[component]
    single = f"{component}/{stem}.safetensors"
    index_file = f"{single}.index.json"
    if single in files and index_file in files:
        problems.append(
            f"{component}/ has both {stem}.safetensors and a sharded index: ambiguous, remove one"
        )
        return ()
    if single in files:
        return (single,)
    if index_file in files:
        weight_map = _read_json_checked(read_json, index_file, where)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            problems.append(f"{index_file} has no 'weight_map'")
            return ()
        shards = sorted({f"{component}/{name}" for name in weight_map.values()})
        bad = [s for s in shards if not s.endswith(".safetensors") or "/" in s[len(component) + 1 :]]
        if bad:
            problems.append(f"{index_file} lists files that are not safetensors shards: {bad}")
            return ()
        missing = [s for s in shards if s not in files]
        if missing:
            problems.extend(f"{s} missing (listed in {index_file})" for s in missing)
            return ()
        return tuple(shards)
    top = sorted(rel for rel in files if posixpath.dirname(rel) == component)
    pickles = [rel for rel in top if rel.endswith(PICKLE_SUFFIXES)]
    other_safetensors = [rel for rel in top if rel.endswith(".safetensors")]
    if other_safetensors:
        problems.append(
            f"{single} missing; found only {other_safetensors} "
            "(variant weights such as *.fp16.safetensors are not loaded)"
        )
    elif pickles:
        unsafe.append(f"{component}/ has only pickle checkpoints {pickles} and no *.safetensors")
    else:
        problems.append(f"{single} missing (no weights in {component}/)")
    return ()


def _read_json_checked(read_json: Callable[[str], Any], rel: str, where: str) -> Any:
    try:
        return read_json(rel)
    except json.JSONDecodeError as error:
        raise ModelLayoutError(where, [f"{rel} is not valid JSON ({error})"]) from error


def _check_unet_config(config: Mapping[str, Any], where: str) -> None:
    """Refuse UNets DiffEdit cannot drive: extra input channels (inpainting, depth) or SDXL conditioning."""
    problems = []
    if config.get("in_channels") != config.get("out_channels"):
        problems.append(
            f"unet/config.json has in_channels={config.get('in_channels')} but "
            f"out_channels={config.get('out_channels')}: an inpainting/depth UNet, not a text-to-image one"
        )
    if config.get("addition_embed_type") is not None:
        problems.append(
            f"unet/config.json has addition_embed_type={config.get('addition_embed_type')!r}: "
            "SDXL-style UNets are not supported"
        )
    if problems:
        raise ModelLayoutError(where, problems)


def _wanted(rel: str) -> bool:
    return any(fnmatch.fnmatchcase(rel, pattern) for pattern in FILE_PATTERNS)


# --------------------------------------------------------------------------------------------- weights hash
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
        _write_json_atomic(sidecar, {"files": key, "sha256": result})
    except OSError as error:  # read-only model directory: just don't remember
        log.debug("not caching the weights hash in %s: %s", sidecar, error)
    return result


# --------------------------------------------------------------------------------------------- sources
def redact_url(url: str) -> str:
    """``url`` without credentials: ``user:password@`` dropped, secret-looking query values replaced.

    Plain paths come back unchanged; chained fsspec URLs (``a::b://...``) are redacted part by part.
    """
    if "::" in url:
        return "::".join(redact_url(part) for part in url.split("::"))
    parts = urlsplit(url)
    if not parts.scheme or "://" not in url:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "REDACTED" if _SECRET_QUERY_KEY.search(k) else v) for k, v in pairs])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def default_cache_dir() -> Path:
    """``$DIFFEDIT_CACHE`` when set, else ``~/.cache/diffedit-batch/models``."""
    configured = os.environ.get("DIFFEDIT_CACHE")
    return (
        Path(configured).expanduser() if configured else Path.home() / ".cache" / "diffedit-batch" / "models"
    )


def _classify(source: str) -> tuple[str, str]:
    """("local", path) | ("remote", url) | ("hub", repo_id)."""
    if "://" in source or "::" in source:
        from fsspec.utils import get_protocol

        if "::" not in source and get_protocol(source) in ("file", "local"):
            parts = urlsplit(source)
            if parts.netloc not in ("", "localhost"):
                raise ModelSourceError(
                    f"{redact_url(source)}: a file:// URL must name a local path (file:///abs/path)"
                )
            return "local", url2pathname(parts.path)
        return "remote", source
    if os.path.exists(source) or not _HUB_ID.match(source):
        return "local", source
    return "hub", source


# --------------------------------------------------------------------------------------------- remote cache
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
    entries = [[rel, *listing[rel]] for rel in sorted(listing) if _wanted(rel)]

    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache_root.mkdir(parents=True, exist_ok=True)
    name = _cache_name(shown, options)
    final = cache_root / name
    lock_path = cache_root / f"{name}.lock"
    with _flock(lock_path, exclusive=True):
        previous = _read_manifest(final)
        if previous == entries and all(_size(final / rel) == size for rel, size, _ in entries):
            log.info("%s: cached copy %s is current", shown, final)
            return CacheSync(final, lock_path, (), tuple(rel for rel, _, _ in entries))
        for stale in [*cache_root.glob(f".tmp-{name}-*"), *cache_root.glob(f".old-{name}-*")]:
            shutil.rmtree(stale, ignore_errors=True)  # left by a process that died mid-sync
        tmp = cache_root / f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            downloaded, reused = _fill(fs, root, shown, final, tmp, entries, previous or [])
            _write_json_atomic(tmp / MANIFEST_NAME, {"source": shown, "files": entries})
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
        if version is not None and before.get(rel) == (size, version) and _size(old) == size:
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
        got = _size(tmp / rel)
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


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=1) + "\n")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


@contextlib.contextmanager
def _flock(path: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold ``fcntl.flock`` on ``path`` (created if missing): exclusive or shared."""
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------- hub
def _download_from_hub(repo_id: str, *, revision: str | None, cache_dir: str | Path | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    named = f"{repo_id}@{revision}" if revision else repo_id
    taken = f"{repo_id!r} is not a local path, so it was taken as a Hugging Face Hub id"
    try:
        path = snapshot_download(
            repo_id, revision=revision, allow_patterns=list(FILE_PATTERNS), cache_dir=cache_dir
        )
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as error:
        raise ModelSourceError(
            f"{taken}, but the hub is unreachable (no network, or HF_HUB_OFFLINE=1) and no cached snapshot "
            f"of {named} was found: download it where the hub is reachable, or pass a local directory or an "
            "s3:// URL"
        ) from error
    except RevisionNotFoundError as error:
        raise ModelSourceError(f"{taken}: revision {revision!r} not found") from error
    except RepositoryNotFoundError as error:  # also gated and private repos without a token
        raise ModelSourceError(
            f"{taken}: repository not found, gated or private (is HF_TOKEN set?)"
        ) from error
    except HfHubHTTPError as error:
        raise ModelSourceError(f"{taken}: the hub answered with an error: {error}") from error
    return Path(path)


# --------------------------------------------------------------------------------------------- loading
def load_bundle(
    source: str,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    storage_options: dict | None = None,
) -> ModelBundle:
    """Load a diffusers Stable Diffusion model (SD 1.x/2.x layout) into a ``ModelBundle``.

    ``source``: a local directory, a ``file://`` URL, any other fsspec URL (synced into ``cache_dir``,
    default ``default_cache_dir()``), or a hub id ``org/name`` (``cache_dir`` is then the
    huggingface_hub cache, default its own). ``revision`` pins a hub revision and is refused for other
    sources. ``storage_options`` go to the fsspec filesystem of a URL and are ignored otherwise.
    ``dtype``: see ``resolve_dtype``; every module is moved to ``device`` in it.
    """
    import torch

    device = torch.device(device)
    resolved = resolve_dtype(device, dtype)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available")
    shown = redact_url(source)
    kind, location = _classify(source)
    if revision is not None and kind != "hub":
        raise ValueError(
            f"{shown}: revision={revision!r} applies only to hub ids; pin a directory by its path"
        )
    if kind == "local":
        root = Path(location).expanduser()
        if not root.exists():
            raise ModelSourceError(f"{shown}: no such directory (nor an fsspec URL or a hub id org/name)")
        if not root.is_dir():
            raise ModelLayoutError(
                shown, ["is a file, not a directory (single-file checkpoints are not supported)"]
            )
        return _load_directory(root, device=device, dtype=resolved, source=shown, where=shown)
    if kind == "remote":
        synced = sync_to_cache(source, cache_dir=cache_dir, storage_options=storage_options)
        with _flock(synced.lock_path, exclusive=False):  # no re-sync may swap the copy while we read it
            return _load_directory(synced.path, device=device, dtype=resolved, source=shown, where=shown)
    root = _download_from_hub(location, revision=revision, cache_dir=cache_dir)
    return _load_directory(root, device=device, dtype=resolved, source=shown, where=shown)


def _list_local(root: Path) -> set[str]:
    """Posix paths, relative to ``root``, of every file below it; hidden files and folders skipped."""
    files = set()
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        relative = Path(directory).relative_to(root)
        files.update((relative / name).as_posix() for name in names if not name.startswith("."))
    return files


def _load_directory(
    root: Path, *, device: torch.device, dtype: torch.dtype, source: str, where: str
) -> ModelBundle:
    """Check the layout of the local directory ``root``, hash its weights and load the components."""
    weights = check_layout(_list_local(root), lambda rel: json.loads((root / rel).read_text()), where)
    _check_unet_config(json.loads((root / "unet" / "config.json").read_text()), where)
    scheduler_config = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    weights_hash = weights_sha256(root, [rel for files in weights.values() for rel in files])

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from diffedit.bundle import ModelBundle

    safe = {"use_safetensors": True, "local_files_only": True, "dtype": dtype}
    unet = UNet2DConditionModel.from_pretrained(str(root / "unet"), **safe).to(device)
    vae = AutoencoderKL.from_pretrained(str(root / "vae"), **safe).to(device)
    text_encoder = CLIPTextModel.from_pretrained(str(root / "text_encoder"), **safe).to(device)
    tokenizer = CLIPTokenizer.from_pretrained(str(root / "tokenizer"), local_files_only=True)
    return ModelBundle(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler_config=scheduler_config,
        source=source,
        weights_hash=weights_hash,
    )

"""What a job's output rows are a function of: the model, found and fingerprinted without loading it,
and the results identity (``results_hash``) that ``validate`` and ``run`` both compare with the output's.

A rerun into an existing output must have the same results hash, else the output holds rows of
another configuration (``--overwrite`` or another output path). The hash is keyed on what determines
the pixels of a row, and on nothing that depends on where the job runs:

=====================  ========================================================================
key                    from
=====================  ========================================================================
``results_version``    ``RESULTS_VERSION``, bumped by a code change that alters output rows
``model``              the model's fingerprint (below), never its path or URL
``params``             the effective ``EditParams`` (job-wide defaults; row overrides are rows')
``images``             the image limits and modes (``images.*`` except the ``allow`` list, an
                       access policy: a refused row fails with its reason, it is not edited)
``compute``            ``device`` and ``dtype`` (they change the numbers)
``scoring``            which scores, at which noise levels and draws (the ``score_*`` columns);
                       a CLIP model by the sha256 of its files, never its path
``selection``          the candidates and the objective (which candidate a row keeps)
``filter``             the thresholds (the ``keep`` and ``reject_reason`` columns)
``encoding``           the edit's lossy encoding (``output.image_format`` webp/jpeg and its
                       quality); absent for PNG, which is lossless
=====================  ========================================================================

Not in it: how the input is stored (``output.input_image``: its bytes, a reference or PNG show the same
pixels and change no result), the input, output, model and cache paths, the job file's location, the name, the
working directory (a checkout anywhere, ``ray job submit --working-dir``'s ephemeral copy), actor
counts, batch sizes and threads (a row's result does not depend on its batch-mates), the failure policy.

The model's fingerprint, by source kind (``ModelSource``):

* local directory: the sha256 of its safetensors weights (``diffedit.loading.weights_sha256``, read
  once and remembered in a sidecar keyed by size and mtime, so a rerun does not rehash) and the
  sha256 of its small files (configs, tokenizer, scheduler), which also change results;
* remote directory (``s3://``, ``gs://``, ...): the listing of the files a load reads, as
  (relative path, size, ETag / md5 / generation); an ETag is derived from the content (S3: MD5, or
  the MD5 of part MD5s for a multipart upload), not from the bucket or key, so a copy uploaded the
  same way keeps the identity. Weights are not downloaded to hash them; a copy uploaded with other
  part sizes is, conservatively, another configuration;
* Hugging Face Hub repository (``hf://org/name``): the repository and the commit its revision
  resolves to now (a commit pins every byte), asked from the hub, or, offline, read from the local
  snapshot cache. The actors then load that exact commit, so a branch that moves during a run cannot
  mix two models in one output.

The same weights reached through different kinds (a local copy of an S3 model) have different
fingerprints: such a rerun is refused as another configuration, never silently mixed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.config import ConfigError, JobConfig
from pipeline.faults import credentials_message, rejected_credentials
from pipeline.sizing import Geometry, geometry_from_configs
from pipeline.storage import StorageError, filesystem, redact

#: Bump when a change of this code alters the output rows of the same input and configuration (the
#: DiffEdit steps, image decoding or PNG encoding, the output schema). Documentation, logging,
#: scheduling and storage changes leave it alone.
RESULTS_VERSION = 2  # 2: scores, candidates, keep / reject_reason and provenance columns (issue 17)

#: How a Hugging Face Hub repository is written in ``model.source``.
HUB_SCHEME = "hf://"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class ModelSource:
    """Where the model is, as the actors load it, and what identifies its weights."""

    kind: Literal["local", "remote", "hub"]
    location: str  # what load_bundle gets: an absolute directory, a URL, or a hub repo id
    revision: str | None  # hub: the commit the revision resolved to; else None
    fingerprint: dict[str, Any]  # see the module docstring
    description: str  # one line for validate
    family: str = "Stable Diffusion"  # the layout's family's name (diffedit.loading.layout.layout_name)
    # family key, native size and pixel multiple from the UNet's and VAE's configs (pipeline.sizing):
    # the batch plan and the regrouping key; None when the configs could not be read
    geometry: Geometry | None = None


def sha256_json(data: Any) -> str:
    """sha256 of canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def results_identity(job: JobConfig, model: ModelSource) -> dict[str, Any]:
    """THE definition of what the output rows are a function of (see the module docstring)."""
    data = job.to_dict()
    scoring = dict(data["scoring"])
    if scoring.get("clip_model"):  # the CLIP model's content, never its path
        from diffedit.clip import ClipModelError, clip_fingerprint

        try:
            scoring["clip_model"] = {"sha256": clip_fingerprint(scoring["clip_model"])}
        except (ClipModelError, OSError) as exc:
            raise ConfigError(f"{job.source}: scoring.clip_model: {exc}") from None
    identity = {
        "results_version": RESULTS_VERSION,
        "model": model.fingerprint,
        "family": model.family,
        "params": data["params"],
        "images": {k: v for k, v in data["images"].items() if k != "allow"},
        "compute": {k: data["compute"][k] for k in ("device", "dtype")},
        "scoring": scoring,
        "selection": data["selection"],
        "filter": data["filter"],
    }
    if job.output.image_format != "png":  # a lossy edit; PNG adds no key, so earlier outputs keep their hash
        identity["encoding"] = {k: data["output"][k] for k in ("image_format", "image_quality")}
    return identity


def results_hash(identity: dict[str, Any]) -> str:
    return sha256_json(identity)


def identity_difference(prior: dict[str, Any] | None, current: dict[str, Any]) -> str:
    """Which keys of two results identities differ ("model, params"), for error messages."""
    if not isinstance(prior, dict):
        return "unknown (the output was written by an older version)"
    keys = sorted(k for k in set(prior) | set(current) if prior.get(k) != current.get(k))
    return ", ".join(keys) or "none"


# --------------------------------------------------------------------------- the model


def inspect_model(job: JobConfig) -> ModelSource:
    """Find ``model.source`` (already resolved by ``config.resolve_paths``), check its layout without
    loading weights, and fingerprint it. Every problem is a ``ConfigError`` (exit 2)."""
    source = job.model.source
    where = f"{job.source}: model.source {redact(source)}"
    if source.startswith(HUB_SCHEME):
        return _inspect_hub(job, source[len(HUB_SCHEME) :], where)
    if job.model.revision is not None:
        raise ConfigError(
            f"{where}: model.revision applies only to hub repositories ({HUB_SCHEME}org/name); "
            "a directory is pinned by its content"
        )
    if "://" in source or "::" in source:
        return _inspect_remote(job, source, where)
    return _inspect_local(source, where)


def _check_layout(
    files: set[str], read_json: Callable[[str], Any], where: str
) -> tuple[dict[str, tuple[str, ...]], str, Geometry | None]:
    """The layout's weight files per component, its family's name for the report
    (``layout_name``: "Stable Diffusion", "Stable Diffusion XL", "Stable Diffusion 3" or "FLUX.1", a UNet
    directory with a flow scheduler marked ", rectified-flow UNet") and
    its geometry (``pipeline.sizing.geometry_from_configs``)."""
    from diffedit.loading.errors import ModelLayoutError, UnsafeWeightsError
    from diffedit.loading.layout import check_layout, layout_family, layout_name

    try:
        weights = check_layout(files, read_json, where)
    except (ModelLayoutError, UnsafeWeightsError) as exc:
        raise ConfigError(str(exc)) from None
    index = read_json("model_index.json")
    geometry = geometry_from_configs(layout_family(index), read_json)
    return weights, layout_name(index), geometry


def _small_files_sha256(files: list[str], read_bytes: Callable[[str], bytes]) -> str:
    digest = hashlib.sha256()
    for rel in sorted(files):
        data = read_bytes(rel)
        digest.update(f"{rel}\0{len(data)}\0".encode() + data)
    return digest.hexdigest()


def _inspect_local(root: str, where: str) -> ModelSource:
    from diffedit.loading.hashing import weights_sha256
    from diffedit.loading.layout import wanted as _wanted

    if not os.path.exists(root):
        raise ConfigError(
            f"{where}: no such directory (a relative model.source resolves against the working directory; "
            f"a Hugging Face Hub repository is written {HUB_SCHEME}org/name)"
        )
    if not os.path.isdir(root):
        raise ConfigError(f"{where}: is a file, not a model directory")
    files: set[str] = set()
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        rel = os.path.relpath(directory, root)
        files.update(
            os.path.normpath(os.path.join(rel, n)).replace(os.sep, "/")
            for n in names
            if not n.startswith(".")
        )

    def read_bytes(rel: str) -> bytes:
        with open(os.path.join(root, rel), "rb") as f:
            return f.read()

    weights, family, geometry = _check_layout(files, lambda rel: json.loads(read_bytes(rel)), where)
    weight_files = sorted(f for fs in weights.values() for f in fs)
    small = [f for f in files if _wanted(f) and not f.endswith(".safetensors")]
    fingerprint = {
        "kind": "files",
        "weights_sha256": weights_sha256(root, weight_files),
        "configs_sha256": _small_files_sha256(small, read_bytes),
    }
    return ModelSource(
        kind="local",
        location=root,
        revision=None,
        fingerprint=fingerprint,
        description=(
            f"local directory {root}: {family} layout OK ({len(weight_files)} safetensors file(s), "
            f"weights sha256 {fingerprint['weights_sha256'][:16]})"
        ),
        family=family,
        geometry=geometry,
    )


def _inspect_remote(job: JobConfig, url: str, where: str) -> ModelSource:
    from diffedit.loading.cache import _list_remote
    from diffedit.loading.errors import ModelSourceError
    from diffedit.loading.layout import wanted as _wanted

    try:
        fs, root = filesystem(url, job.storage)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    root = root.rstrip("/")
    try:
        listing = _list_remote(fs, root, redact(url))
    except ModelSourceError as exc:  # a listed path escaping the directory, or an OSError listing it
        rejected = rejected_credentials(exc)
        if rejected is not None:
            raise ConfigError(credentials_message(where, rejected)) from None
        if isinstance(exc.__cause__, OSError):
            raise StorageError(f"{where}: cannot list: {exc.__cause__}") from None
        raise ConfigError(f"{where}: {exc}") from None
    except Exception as exc:
        if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
            raise ConfigError(f"{where}: no storage credentials in the environment ({exc})") from None
        rejected = rejected_credentials(exc)
        if rejected is not None:
            raise ConfigError(credentials_message(where, rejected)) from None
        raise StorageError(f"{where}: cannot list: {type(exc).__name__}: {exc}") from None
    if not listing:
        raise ConfigError(f"{where}: no such model directory (nothing under it)")
    _, family, geometry = _check_layout(
        set(listing), lambda rel: json.loads(fs.cat_file(f"{root}/{rel}")), where
    )
    entries = [[rel, size, version] for rel, (size, version) in sorted(listing.items()) if _wanted(rel)]
    return ModelSource(
        kind="remote",
        location=url,
        revision=None,
        fingerprint={"kind": "listing", "files": entries},
        description=(
            f"remote directory {redact(url)}: {family} layout OK "
            f"({sum(1 for e in entries if e[0].endswith('.safetensors'))} safetensors file(s))"
        ),
        family=family,
        geometry=geometry,
    )


def hub_cache_dir(job: JobConfig) -> str | None:
    """The hub cache the preflight reads: ``model.cache_dir``, else ``$HF_HUB_CACHE``, else
    ``$HF_HOME/hub``, read now (huggingface_hub reads them once, when it is imported), else None (the
    client's default). The model actors, new processes, read the same variables (``job.actor_env``)."""
    if job.model.cache_dir:
        return job.model.cache_dir
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def _inspect_hub(job: JobConfig, repo: str, where: str) -> ModelSource:
    """Resolve the revision to a commit (hub, else the local snapshot cache) and check the layout."""
    from diffedit.loading.layout import FILE_PATTERNS

    if not _HUB_ID.match(repo):
        raise ConfigError(f"{where}: a hub repository is {HUB_SCHEME}org/name, got {HUB_SCHEME}{repo}")
    revision = job.model.revision
    named = f"{repo}@{revision}" if revision else repo
    try:
        from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    except ImportError as exc:  # pragma: no cover - a dependency
        raise ConfigError(f"{where}: huggingface_hub is not installed: {exc}") from None
    commit = files = read_json = None
    hub_error = None
    cache_dir = hub_cache_dir(job)
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes"):
        try:
            info = HfApi().model_info(repo, revision=revision, timeout=20)
            commit = info.sha
            files = {s.rfilename for s in info.siblings or []}

            def read_json(rel: str) -> Any:
                path = hf_hub_download(repo, rel, revision=commit, cache_dir=cache_dir)
                with open(path) as f:
                    return json.load(f)

        except Exception as exc:  # HTTP errors, and connection errors of whichever HTTP client the hub uses
            hub_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if commit is None:  # offline: the local snapshot cache
        try:
            root = snapshot_download(
                repo,
                revision=revision,
                allow_patterns=list(FILE_PATTERNS),
                cache_dir=cache_dir,
                local_files_only=True,
            )
        except Exception:
            reason = f"asking the hub failed ({hub_error})" if hub_error else "HF_HUB_OFFLINE=1"
            raise ConfigError(
                f"{where}: cannot resolve {named}: {reason}, and no cached snapshot was found "
                f"(hub cache {cache_dir or 'the huggingface_hub default'}); download it where the hub "
                "is reachable, or point model.source at a local directory or an s3:// URL"
            ) from None
        commit = os.path.basename(root.rstrip("/"))
        source = _inspect_local(root, where)
        files = None
        family, geometry = source.family, source.geometry
        weights_hint = f", weights sha256 {source.fingerprint['weights_sha256'][:16]}"
    else:
        assert files is not None and read_json is not None
        _, family, geometry = _check_layout(files, read_json, where)
        weights_hint = ""
    if not _COMMIT.match(commit or ""):
        raise ConfigError(f"{where}: {named} did not resolve to a commit (got {commit!r})")
    return ModelSource(
        kind="hub",
        location=repo,
        revision=commit,
        fingerprint={"kind": "hub", "repo": repo, "commit": commit},
        description=f"hub repository {named} at commit {commit[:12]}: {family} layout OK{weights_hint}",
        family=family,
        geometry=geometry,
    )


__all__ = [
    "HUB_SCHEME",
    "RESULTS_VERSION",
    "ModelSource",
    "identity_difference",
    "inspect_model",
    "results_hash",
    "results_identity",
]

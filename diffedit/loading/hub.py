"""Models by Hugging Face Hub id (``org/name``): a snapshot in the hub client's own cache.

``snapshot_download`` fetches only ``FILE_PATTERNS`` (configs, tokenizer files, safetensors weights) into
the hub cache (``cache_dir``, else ``HF_HUB_CACHE`` / ``HF_HOME``)::

    models--<org>--<name>/blobs/<sha>            file contents
    models--<org>--<name>/snapshots/<commit>/... the repository's files, links into blobs/
    models--<org>--<name>/refs/<branch>          the commit a branch (``main``) points at

With ``HF_HUB_OFFLINE=1`` nothing is asked of the network: a cached snapshot of the revision (a branch
through ``refs/``, or a commit) is used, and its absence is a ``ModelNotFoundError``.
"""

from __future__ import annotations

from pathlib import Path

from diffedit.loading.errors import ModelNotFoundError, ModelSourceError
from diffedit.loading.layout import FILE_PATTERNS

__all__ = ["download_from_hub"]


def download_from_hub(repo_id: str, *, revision: str | None, cache_dir: str | Path | None) -> Path:
    """The local snapshot folder of ``repo_id`` at ``revision`` (default: the ``main`` branch).

    Raises ``ModelNotFoundError`` when the repository or revision does not exist, or when the hub is
    off (``HF_HUB_OFFLINE=1``) and the cache has no snapshot of it; ``ModelSourceError`` when the hub
    cannot be reached or answers with an error (a rerun may succeed).
    """
    from huggingface_hub import constants, snapshot_download
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
        cache = str(cache_dir) if cache_dir is not None else constants.HF_HUB_CACHE
        if constants.HF_HUB_OFFLINE:
            raise ModelNotFoundError(
                f"{taken}, but HF_HUB_OFFLINE=1 and the hub cache {cache} has no snapshot of {named}: "
                "download it where the hub is reachable (into that cache), or pass a local directory or "
                "an s3:// URL"
            ) from error
        raise ModelSourceError(
            f"{taken}, but the hub is unreachable and the hub cache {cache} has no snapshot of {named}: "
            "check the network, or pass a local directory or an s3:// URL"
        ) from error
    except RevisionNotFoundError as error:
        raise ModelNotFoundError(f"{taken}: revision {revision!r} not found") from error
    except RepositoryNotFoundError as error:  # also gated and private repos without a token
        raise ModelNotFoundError(
            f"{taken}: repository not found, gated or private (is HF_TOKEN set?)"
        ) from error
    except HfHubHTTPError as error:
        raise ModelSourceError(f"{taken}: the hub answered with an error: {error}") from error
    return Path(path)

"""Loading a diffusers Stable Diffusion (1.x/2.x) or SDXL model into a ``ModelBundle``, one module per job:

    load.py      load_bundle: the source's kind, then check, hash and assemble a local directory
    layout.py    check_layout: the SD / SDXL directory layouts, from file lists and small JSON files
    hashing.py   weights_sha256: the hash of the weight files, remembered in a sidecar
    cache.py     sync_to_cache: the local cache of remote (fsspec) model directories
    hub.py       download_from_hub: hub ids through the hub client's cache (offline-capable)
    urls.py      classify_source, redact_url
    dtypes.py    resolve_dtype
    errors.py    ModelLayoutError, UnsafeWeightsError, ModelSourceError, ModelNotFoundError
    files.py     atomic JSON writes, file locks, local listings

Weights are read from safetensors files only: a component that has only pickle checkpoints (``*.bin``,
``*.ckpt``, ``*.pt``, ``*.pth``) is refused with ``UnsafeWeightsError``; nothing here ever unpickles.
"""

from typing import Any

from diffedit.loading.cache import MANIFEST_NAME, CacheSync, default_cache_dir, sync_to_cache
from diffedit.loading.errors import ModelLayoutError, ModelNotFoundError, ModelSourceError, UnsafeWeightsError
from diffedit.loading.hashing import HASH_SIDECAR_NAME, weights_sha256
from diffedit.loading.layout import FILE_PATTERNS, check_layout, layout_family
from diffedit.loading.urls import redact_url

#: Names whose modules import torch: loaded on first use (PEP 562), so the layout checks and the weights
#: hash (``validate``, the nightly no-op ``run``) never pay torch's import.
_LAZY = {"load_bundle": "diffedit.loading.load", "resolve_dtype": "diffedit.loading.dtypes"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FILE_PATTERNS",
    "HASH_SIDECAR_NAME",
    "MANIFEST_NAME",
    "CacheSync",
    "ModelLayoutError",
    "ModelNotFoundError",
    "ModelSourceError",
    "UnsafeWeightsError",
    "check_layout",
    "default_cache_dir",
    "layout_family",
    "load_bundle",
    "redact_url",
    "resolve_dtype",
    "sync_to_cache",
    "weights_sha256",
]

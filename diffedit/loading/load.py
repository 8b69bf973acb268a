"""``load_bundle``: a diffusers SD 1.x/2.x or SDXL model, from wherever it is, into a ``ModelBundle``;
an SD3/SD3.5 or FLUX.1 model into a ``FlowBundle`` (``diffedit.flow_bundle``).

``load_bundle(source)`` reads ``source`` by its shape (``classify_source``):

1. a local directory, or a ``file://`` URL to one: loaded in place;
2. any other fsspec URL (``s3://``, ``gs://``, ``memory://``, ``simplecache::s3://`` ...): the directory is
   synced into a local cache (``diffedit.loading.cache``) and loaded from there, under a shared lock;
3. ``org/name`` that is not an existing path: a Hugging Face Hub repository, a snapshot in the hub
   client's cache (``diffedit.loading.hub``; offline with ``HF_HUB_OFFLINE=1``).

Then, for the local directory: 4. the layout is checked (``check_layout``: the family, SD, SDXL, SD3 or FLUX.1, each
component, safetensors only); 5. the weights are hashed (``weights_sha256``); 6. the family's components
are read (``_components``) with ``use_safetensors=True`` and ``local_files_only=True`` into the dtype and
onto the device.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from diffedit.bundle import ModelBundle
from diffedit.flow_bundle import FLOW_FAMILIES, FlowBundle
from diffedit.loading.cache import sync_to_cache
from diffedit.loading.dtypes import resolve_dtype
from diffedit.loading.errors import ModelLayoutError, ModelNotFoundError
from diffedit.loading.files import flock, list_local
from diffedit.loading.hashing import weights_sha256
from diffedit.loading.hub import download_from_hub
from diffedit.loading.layout import check_layout, layout_family, listed
from diffedit.loading.urls import classify_source, redact_url

__all__ = ["load_bundle"]


def load_bundle(
    source: str,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    storage_options: dict | None = None,
) -> ModelBundle:
    """Load a diffusers Stable Diffusion (1.x/2.x) or Stable Diffusion XL model into a ``ModelBundle``.

    ``source``: a local directory, a ``file://`` URL, any other fsspec URL (synced into ``cache_dir``,
    default ``default_cache_dir()``), or a hub id ``org/name`` (``cache_dir`` is then the
    huggingface_hub cache, default its own: ``HF_HUB_CACHE``). ``revision`` pins a hub revision (a
    branch, tag or commit) and is refused for other sources. ``storage_options`` go to the fsspec
    filesystem of a URL and are ignored otherwise. ``dtype``: see ``resolve_dtype``; every module is moved
    to ``device`` in it (an SDXL VAE with ``force_upcast`` stays float32 under float16, see ModelBundle).

    Raises ``ModelNotFoundError`` (the model is not there), ``ModelSourceError`` (storage or hub trouble),
    ``ModelLayoutError`` / ``UnsafeWeightsError`` (not a loadable directory).
    """
    device = torch.device(device)
    resolved = resolve_dtype(device, dtype)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available")
    shown = redact_url(source)
    kind, location = classify_source(source)
    if revision is not None and kind != "hub":
        raise ValueError(
            f"{shown}: revision={revision!r} applies only to hub ids; pin a directory by its path"
        )
    if kind == "local":
        root = Path(location).expanduser()
        if not root.exists():
            raise ModelNotFoundError(f"{shown}: no such directory (nor an fsspec URL or a hub id org/name)")
        if not root.is_dir():
            raise ModelLayoutError(
                shown, ["is a file, not a directory (single-file checkpoints are not supported)"]
            )
        return _load_directory(root, device=device, dtype=resolved, source=shown)
    if kind == "remote":
        synced = sync_to_cache(source, cache_dir=cache_dir, storage_options=storage_options)
        with flock(synced.lock_path, exclusive=False):  # no re-sync may swap the copy while we read it
            return _load_directory(synced.path, device=device, dtype=resolved, source=shown)
    root = download_from_hub(location, revision=revision, cache_dir=cache_dir)
    return _load_directory(root, device=device, dtype=resolved, source=shown)


def _load_directory(root: Path, *, device: torch.device, dtype: torch.dtype, source: str) -> ModelBundle:
    """Check the layout of the local directory ``root``, hash its weights and load the components."""
    weights = check_layout(list_local(root), lambda rel: json.loads((root / rel).read_text()), source)
    index = json.loads((root / "model_index.json").read_text())
    family = layout_family(index)
    scheduler_config = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    weights_hash = weights_sha256(root, [rel for files in weights.values() for rel in files])
    if family in FLOW_FAMILIES:
        return FlowBundle(
            **_flow_components(root, family, index, dtype=dtype, device=device),
            scheduler_config=scheduler_config,
            source=source,
            weights_hash=weights_hash,
            sample_size=index.get("default_sample_size"),
        )
    return ModelBundle(
        **_components(root, family, dtype=dtype, device=device),
        scheduler_config=scheduler_config,
        source=source,
        weights_hash=weights_hash,
        # diffusers' StableDiffusionXLPipeline registers True when model_index.json does not say.
        force_zeros_for_empty_prompt=family == "sdxl"
        and bool(index.get("force_zeros_for_empty_prompt", True)),
    )


def _flow_components(
    root: Path, family: str, index: dict[str, Any], *, dtype: torch.dtype, device: torch.device
) -> dict[str, Any]:
    """SD3's or FLUX.1's modules and tokenizers (the classes model_index.json names, which the layout
    check has pinned), from safetensors only, in ``dtype`` on ``device``; SD3's T5 when it is listed."""
    import diffusers
    import transformers

    safe = {"use_safetensors": True, "local_files_only": True, "dtype": dtype}
    parts: dict[str, Any] = {}
    names = ["transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"]
    if family == "sd3" and listed(index, "text_encoder_3"):
        names += ["text_encoder_3", "tokenizer_3"]
    for name in names:
        library, cls = index[name]
        module = getattr(diffusers if library == "diffusers" else transformers, cls)
        if name.startswith("tokenizer"):
            parts[name] = module.from_pretrained(str(root / name), local_files_only=True)
        else:
            parts[name] = module.from_pretrained(str(root / name), **safe).to(device)
    return parts


def _components(root: Path, family: str, *, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    """The family's modules and tokenizers, read from safetensors only, in ``dtype`` on ``device``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    safe = {"use_safetensors": True, "local_files_only": True, "dtype": dtype}
    parts: dict[str, Any] = {
        "unet": UNet2DConditionModel.from_pretrained(str(root / "unet"), **safe).to(device),
        "vae": AutoencoderKL.from_pretrained(str(root / "vae"), **safe).to(device),
        "text_encoder": CLIPTextModel.from_pretrained(str(root / "text_encoder"), **safe).to(device),
        "tokenizer": CLIPTokenizer.from_pretrained(str(root / "tokenizer"), local_files_only=True),
    }
    if family == "sdxl":
        parts["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(
            str(root / "text_encoder_2"), **safe
        ).to(device)
        parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(str(root / "tokenizer_2"), local_files_only=True)
    return parts

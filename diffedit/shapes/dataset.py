"""The diffusion phase's training data: encoded scenes, their object cells, and encoded edit pairs.

Everything here is a pure function of seeds and of the VAE (``train.py`` caches the results in its
state, so a resumed run trains on the same tensors).

* **Scenes**: ``sample_scene(seed, n_objects=n)`` with the object count drawn from ``object_probs``
  (``scenes.N_OBJECT_PROBS`` unless asked otherwise), encoded to posterior-mode latents times the
  scaling factor, with the fraction of each 4x4-pixel latent cell that objects cover (the weight
  map of ``train.py``'s object-weighted loss).
* **Edit pairs** (``scenes.train_edit_pair``): a training scene and the same scene with one object
  recoloured or reshaped, both encoded, the edited caption, and the latent cells the edit touches
  (any pixel of the object before or after the edit). ``train.py`` builds inputs that show the
  *source* inside those cells and asks for the noise that leads to the *edited* latent: the model
  learns to repaint a region under the caption even where the noisy latent still shows the old
  object, which is what DiffEdit's decoding asks of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from diffedit.shapes.scenes import N_OBJECT_PROBS, sample_scene, train_edit_pair

#: Pixels per latent cell side (the shapes VAE downsamples by 4).
CELL = 4


def images_tensor(images: Sequence[Any]) -> torch.Tensor:
    """PIL RGB images to [-1, 1].  # (B, 3, H, W)"""
    arr = np.stack([np.asarray(im) for im in images])  # (B, H, W, 3) uint8
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def cell_fraction(masks: Sequence[np.ndarray]) -> torch.Tensor:
    """Fraction of each latent cell covered by each pixel mask.  # (B, 1, H/4, W/4) in [0, 1]"""
    m = torch.from_numpy(np.stack(masks)).float()[:, None]  # (B, 1, H, W)
    return F.avg_pool2d(m, CELL)


def mode_latents(vae: Any, scaling: float, images: Sequence[Any]) -> torch.Tensor:
    """Posterior-mode latents of PIL images times the scaling factor, as DiffEdit encodes.  # (B, 4, h, w)"""
    return vae.encode(images_tensor(images)).latent_dist.mode() * scaling


def object_counts(seeds: Sequence[int], object_probs: Sequence[float] | None) -> list[int | None]:
    """The object count of each training scene: None (the scene's own draw from ``N_OBJECT_PROBS``)
    unless ``object_probs`` asks for another mix, then a draw seeded by the scene's seed."""
    if object_probs is None or tuple(object_probs) == N_OBJECT_PROBS:
        return [None] * len(seeds)
    p = np.asarray(object_probs, dtype=float)
    if p.shape != (3,) or (p < 0).any() or abs(p.sum() - 1) > 1e-6:
        raise ValueError(
            f"object_probs must be 3 probabilities (1, 2, 3 objects) summing to 1, got {object_probs}"
        )
    return [int(np.random.default_rng([s, 13]).choice([1, 2, 3], p=p)) for s in seeds]


@torch.no_grad()
def encode_scenes(
    vae: Any, scaling: float, seeds: Sequence[int], object_probs: Sequence[float] | None = None
) -> dict[str, Any]:
    """Latents, captions and object-cell fractions of the training scenes of ``seeds``."""
    scenes = [
        sample_scene(s, n_objects=n) for s, n in zip(seeds, object_counts(seeds, object_probs), strict=True)
    ]
    latents = mode_latents(vae, scaling, [s.image for s in scenes])  # (B, 4, 16, 16)
    objects = [np.logical_or.reduce([o.mask for o in s.objects]) for s in scenes]
    return {
        "latents": latents.half(),
        "captions": [s.caption for s in scenes],
        "objects": cell_fraction(objects).half(),  # (B, 1, 16, 16)
    }


@torch.no_grad()
def encode_pairs(
    vae: Any,
    scaling: float,
    seeds: Sequence[int],
    object_probs: Sequence[float] | None = None,
    p_recolor: float = 0.5,
) -> dict[str, Any]:
    """Source and edited latents, edited captions, edit cells and object cells of ``seeds``' pairs."""
    counts = object_counts(seeds, object_probs)
    tasks = [train_edit_pair(s, n_objects=n, p_recolor=p_recolor) for s, n in zip(seeds, counts, strict=True)]
    src = mode_latents(vae, scaling, [t.image for t in tasks])
    tgt = mode_latents(vae, scaling, [t.target_image for t in tasks])
    objects = [np.logical_or.reduce([t.object_mask_after, *(m for *_, m in t.others)]) for t in tasks]
    return {
        "source": src.half(),  # (B, 4, 16, 16)
        "target": tgt.half(),  # (B, 4, 16, 16)
        "captions": [t.query for t in tasks],
        "region": (cell_fraction([t.region for t in tasks]) > 0).half(),  # (B, 1, 16, 16): any pixel edited
        "objects": cell_fraction(objects).half(),  # (B, 1, 16, 16), of the edited scene
        "kinds": [t.kind for t in tasks],
    }


def encode_chunked(encode: Any, seeds: range, chunk: int = 128, **kwargs: Any) -> dict[str, Any]:
    """``encode(vae, scaling, seeds, ...)`` (``encode_scenes`` / ``encode_pairs``, with ``vae`` and
    ``scaling`` among ``kwargs``) over ``seeds`` in chunks of ``chunk``, joined by ``concat``."""
    return concat([encode(seeds=seeds[k : k + chunk], **kwargs) for k in range(0, len(seeds), chunk)])


def concat(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Chunks of ``encode_scenes`` / ``encode_pairs`` joined: tensors concatenated, lists chained."""
    out: dict[str, Any] = {}
    for key in parts[0]:
        vals = [p[key] for p in parts]
        out[key] = torch.cat(vals) if isinstance(vals[0], torch.Tensor) else [v for vs in vals for v in vs]
    return out


def edit_pair_input(
    source: torch.Tensor, target: torch.Tensor, region: torch.Tensor, noise: torch.Tensor, a: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The noisy input and the epsilon target of edit pairs at cumulative alphas ``a``.

    x_t = sqrt(a) * (R * source + (1 - R) * target) + sqrt(1 - a) * noise: the *source* shows
    through inside the edit cells R. The target is the epsilon that DDIM's x0-prediction
    x0 = (x_t - sqrt(1 - a) * eps) / sqrt(a) turns into the *edited* latent:
    eps* = (x_t - sqrt(a) * target) / sqrt(1 - a) = noise + sqrt(a / (1 - a)) * R * (source - target).
    Shapes: latents and noise (B, 4, h, w), region (B, 1, h, w), a (B, 1, 1, 1).
    """
    x0_shown = region * source + (1 - region) * target
    xt = a.sqrt() * x0_shown + (1 - a).sqrt() * noise
    eps = (xt - a.sqrt() * target) / (1 - a).sqrt()
    return xt, eps


def flow_level(u: torch.Tensor, shift: float) -> torch.Tensor:
    """The rectified-flow level s of uniform draws u in [0, 1) under a time shift (SD3's, Esser et al.
    2024 eq. 23; diffusers' ``FlowMatchEulerDiscreteScheduler`` ``shift``): s = k u / (1 + (k - 1) u).
    With k = 2 the levels follow Stable Diffusion's VP levels in flow coordinates, s = b / (a + b),
    within 0.05 RMS over t in [0, 1000).  # same shape as u"""
    return shift * u / (1 + (shift - 1) * u)


def flow_input(x0: torch.Tensor, noise: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The noisy input and the velocity target of the rectified-flow objective at levels ``s``:
    x_s = (1 - s) x_0 + s eps, v = eps - x_0 (diffusers' flow convention, the target of SD3 and FLUX.1).
    Shapes: x0 and noise (B, 4, h, w), s (B, 1, 1, 1)."""
    return (1 - s) * x0 + s * noise, noise - x0


def edit_pair_flow_input(
    source: torch.Tensor, target: torch.Tensor, region: torch.Tensor, noise: torch.Tensor, s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``edit_pair_input`` in velocity form: the noisy input and the velocity target of edit pairs at
    flow levels ``s`` (> 0).

    x_s = (1 - s) (R * source + (1 - R) * target) + s * noise: the *source* shows through inside the
    edit cells R. The target is the velocity whose clean-latent prediction x0 = x_s - s v is the
    *edited* latent: v* = (x_s - target) / s = noise - target + ((1 - s) / s) * R * (source - target).
    Shapes: latents and noise (B, 4, h, w), region (B, 1, h, w), s (B, 1, 1, 1).
    """
    x0_shown = region * source + (1 - region) * target  # (B, 4, h, w)
    xs = (1 - s) * x0_shown + s * noise  # (B, 4, h, w)
    return xs, (xs - target) / s

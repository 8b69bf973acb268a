"""Pure metrics of the quality benchmark: mask IoU, background PSNR and MAE outside a region, the
latent-grid ceiling of a mask. Judging an edit right or wrong is ``diffedit.shapes.judge``'s."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from diffedit.shapes.judge import PSNR_CAP_DB, psnr_from_mse

__all__ = ["PSNR_CAP_DB", "psnr_from_mse"]  # re-exported: the one PSNR of the project's judging
from diffedit.shapes.scenes import EditTask


def mask_iou(mask: np.ndarray, region: np.ndarray) -> float:
    """Intersection over union of two (H, W) boolean masks; 1.0 when both are empty."""
    m, r = np.asarray(mask, dtype=bool), np.asarray(region, dtype=bool)
    if m.shape != r.shape:
        raise ValueError(f"mask shape {m.shape} != region shape {r.shape}")
    union = int((m | r).sum())
    return 1.0 if union == 0 else int((m & r).sum()) / union


def _as_float_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    """An RGB image as float64 (H, W, 3) in 0..255."""
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.float64)


def _outside(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pixels of ``a`` and ``b`` outside ``region``, (N, 3) each."""
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    keep = ~np.asarray(region, dtype=bool)
    if keep.shape != a.shape[:2]:
        raise ValueError(f"region shape {keep.shape} != image (H, W) {a.shape[:2]}")
    if not keep.any():
        raise ValueError("the region covers the whole image: no background to compare")
    return a[keep], b[keep]


def background_psnr(
    edited: Image.Image | np.ndarray, reference: Image.Image | np.ndarray, region: np.ndarray
) -> float:
    """PSNR (dB, peak 255) of ``edited`` against ``reference`` over the pixels outside ``region``
    (every channel of every such pixel), capped at ``PSNR_CAP_DB``."""
    a, b = _outside(_as_float_rgb(edited), _as_float_rgb(reference), region)
    return psnr_from_mse(float(np.mean((a - b) ** 2)))


def background_mae(
    edited: Image.Image | np.ndarray, reference: Image.Image | np.ndarray, region: np.ndarray
) -> float:
    """Mean absolute error (0..255 units) of ``edited`` against ``reference`` outside ``region``."""
    a, b = _outside(_as_float_rgb(edited), _as_float_rgb(reference), region)
    return float(np.mean(np.abs(a - b)))


def mask_to_image(mask_latent: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) latent mask -> (H, W) bool at image ``size`` (width, height), nearest neighbour: each
    latent pixel covers its block of image pixels."""
    img = Image.fromarray(np.asarray(mask_latent, dtype=bool).astype(np.uint8) * 255, "L")
    return np.asarray(img.resize(size, Image.Resampling.NEAREST)) > 127


def latent_grid_iou(region: np.ndarray, factor: int) -> float:
    """The best mask IoU a latent-resolution mask can reach on ``region``: the region rounded to the
    ``factor`` x ``factor`` pixel blocks of the latent grid (a block is in when at least half of its
    pixels are), upsampled back, against the region. Sides must be multiples of ``factor``."""
    r = np.asarray(region, dtype=bool)
    h, w = r.shape
    if h % factor or w % factor:
        raise ValueError(f"region shape {r.shape} is not a multiple of {factor}")
    frac = r.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))  # (h/f, w/f)
    return mask_iou(np.kron(frac >= 0.5, np.ones((factor, factor), dtype=bool)), r)


def latent_grid_ceiling(tasks: Sequence[EditTask], factor: int) -> dict[str, float]:
    """Mean ``latent_grid_iou`` per task kind: the mask-IoU ceiling of any latent-space mask."""
    kinds = sorted({t.kind for t in tasks})
    return {
        k: float(np.mean([latent_grid_iou(t.region, factor) for t in tasks if t.kind == k])) for k in kinds
    }


def mean_of(values: Sequence[float]) -> float:
    """Mean of the values that are neither None nor NaN; NaN when none is left."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")

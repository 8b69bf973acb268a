"""A deterministic reader of the shapes world: (image, region) -> (dominant colour, shape).

Background model: backgrounds are achromatic and objects saturated, so an *object pixel* is one whose
chroma (max - min of its RGB) is at least ``MIN_CHROMA``. Inside the region, every object pixel votes
for its nearest object colour (Euclidean RGB); the dominant colour is the most voted. Its footprint
(the region's object pixels of that colour) gives the shape: each of the four shapes is fitted to it
(template centre and size searched on a grid; pixels of other colours, possible occluders, do not
count) and the shape with the best intersection-over-union wins. With fewer than
``MIN_PIXELS`` object pixels the answer is ("none", "none").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from diffedit.shapes.vocab import OBJECT_COLOURS, SHAPES

#: Least chroma (0..255) of an object pixel; backgrounds have 0, object colours >= 130.
MIN_CHROMA = 60
#: Fewest object pixels for an answer other than "none".
MIN_PIXELS = 12

_PALETTE = np.array(list(OBJECT_COLOURS.values()), dtype=np.float64)  # (K, 3)
_NAMES = list(OBJECT_COLOURS)


def object_pixels(image: Image.Image | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Object-pixel mask and nearest-palette index of every pixel.  # (H, W) bool, (H, W) int"""
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float64)
    chroma = arr.max(axis=-1) - arr.min(axis=-1)  # (H, W)
    dist = ((arr[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1)  # (H, W, K)
    return chroma >= MIN_CHROMA, dist.argmin(-1)


def _convex(xs: np.ndarray, ys: np.ndarray, pts: list[tuple[float, float]]) -> np.ndarray:
    """Points inside a convex polygon (vertices in order).  # broadcast shape of xs, ys"""
    inside = np.ones(np.broadcast_shapes(xs.shape, ys.shape), dtype=bool)
    sign = None
    for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1], strict=True):
        cross = (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0)
        if sign is None:  # orientation from the polygon's centroid
            cx, cy = np.mean([p[0] for p in pts]), np.mean([p[1] for p in pts])
            sign = np.sign((x1 - x0) * (cy - y0) - (y1 - y0) * (cx - x0))
        inside &= cross * sign >= -1e-9
    return inside


def template(shape: str, xs: np.ndarray, ys: np.ndarray, r: float) -> np.ndarray:
    """Footprint of ``shape`` of half-size ``r`` centred at 0, at offsets (xs, ys) (numpy twin of
    ``scenes.shape_mask``, without PIL's rasterisation details)."""
    if shape == "circle":
        return xs**2 + ys**2 <= r**2
    if shape == "square":
        return (np.abs(xs) <= 0.85 * r) & (np.abs(ys) <= 0.85 * r)
    if shape == "triangle":
        return (ys <= 0.8 * r) & (ys + r >= 1.8 * np.abs(xs))
    if shape == "star":
        outer = [(1.15 * r * np.cos(a), 0.1 * r + 1.15 * r * np.sin(a)) for a in _STAR_OUTER]
        inner = [(0.5 * r * np.cos(a), 0.1 * r + 0.5 * r * np.sin(a)) for a in _STAR_INNER]
        out = _convex(xs, ys, inner)
        for k in range(5):  # each point: its tip and the two inner vertices beside it
            out |= _convex(xs, ys, [inner[(k - 1) % 5], outer[k], inner[k]])
        return out
    raise ValueError(f"unknown shape {shape!r}")


_STAR_OUTER = [-np.pi / 2 + 2 * k * np.pi / 5 for k in range(5)]
_STAR_INNER = [a + np.pi / 5 for a in _STAR_OUTER]


def _best_fit(
    shape: str, found: np.ndarray, care: np.ndarray, radii: np.ndarray
) -> tuple[float, float, float, float]:
    """Best IoU of ``shape`` templates with ``found`` over ``care`` pixels: (iou, cx, cy, r).

    Coarse grid of centres (step 2 px around the footprint's box centre) and radii, then a local
    refinement at step 1. found, care: (h, w) bool crops.
    """
    h, w = found.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)  # (h, w)
    fy, fx = np.nonzero(found)
    c0x, c0y = (fx.min() + fx.max()) / 2, (fy.min() + fy.max()) / 2

    def score(cx: float, cy: float, r: float) -> float:
        t = template(shape, xs - cx, ys - cy, r) & care
        inter = (t & found).sum()
        return inter / max(1, (t | found).sum())

    best = (-1.0, c0x, c0y, float(radii[0]))
    for r in radii[::2]:
        for dy in range(-6, 7, 2):
            for dx in range(-6, 7, 2):
                sc = score(c0x + dx, c0y + dy, float(r))
                if sc > best[0]:
                    best = (sc, c0x + dx, c0y + dy, float(r))
    _, bx, by, br = best
    for r in (br - 1, br, br + 1):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                sc = score(bx + dx, by + dy, r)
                if sc > best[0]:
                    best = (sc, bx + dx, by + dy, r)
    return best


def classify_shape(found: np.ndarray, dont_care: np.ndarray | None = None) -> str:
    """The shape whose best-fitting template matches a footprint best (IoU), "none" if tiny.

    ``dont_care`` (H, W) bool marks pixels that may hide the object (other objects: occluders);
    they count neither for nor against a template.
    """
    if found.sum() < MIN_PIXELS:
        return "none"
    care = np.ones_like(found) if dont_care is None else ~(dont_care & ~found)
    ys, xs = np.nonzero(found)
    pad = 12
    y0, y1 = max(0, ys.min() - pad), min(found.shape[0], ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(found.shape[1], xs.max() + pad + 1)
    crop_f, crop_c = found[y0:y1, x0:x1], care[y0:y1, x0:x1]  # (h, w)
    scale = found.shape[0] / 64.0
    radii = np.arange(6.0, 17.0) * scale
    fits = [_best_fit(shape, crop_f, crop_c, radii)[0] for shape in SHAPES]
    return SHAPES[int(np.argmax(fits))]


def classify_region(image: Image.Image | np.ndarray, region: np.ndarray) -> tuple[str, str]:
    """Dominant named colour and shape of the object inside ``region`` (H, W) bool."""
    is_obj, nearest = object_pixels(image)
    inside = is_obj & region.astype(bool)
    if inside.sum() < MIN_PIXELS:
        return "none", "none"
    votes = np.bincount(nearest[inside], minlength=len(_NAMES))  # (K,)
    k = int(votes.argmax())
    return _NAMES[k], classify_shape(inside & (nearest == k), dont_care=is_obj & (nearest != k))


def objects_kept(
    image: Image.Image | np.ndarray, objects: Sequence[tuple[str, str, np.ndarray]]
) -> list[bool]:
    """For each (colour, shape, (H, W) bool pixels) object, whether ``image`` still shows it there:
    ``classify_region`` over its pixels reads the same colour and shape. The stricter half of a clean
    edit (the edited object right, and every other object kept)."""
    kept = []
    for colour, shape, pixels in objects:
        kept.append(classify_region(image, np.asarray(pixels, dtype=bool)) == (colour, shape))
    return kept

"""The strict judge of an edit of the shapes world: (task, edited image) -> ``Judgement``.

The shapes world gives the exact answer of every edit task (``scenes.EditTask``): the target scene,
rendered, and every object's footprint in it. The judge compares the whole edited image with it, in
four measurements (pixel sets are (H, W) bool; |X| counts pixels):

1. **Object**: the pixels that show the target colour, ``P = pure(c_t) ∩ N \\ O_t``, inside the
   neighbourhood ``N`` of the edit (its old and new footprints dilated by ``NEIGHBOURHOOD`` px) and
   outside the footprints ``O_t`` of other objects of that colour (theirs; target colour spilt onto an
   object of another colour counts against the edit); against the ground-truth footprint ``A``:

       object_iou   = |P ∩ A| / |P ∪ A|
       shape_margin = object_iou - max_s IoU(P, F_s)      over the other shapes s, each drawn at the
                                                           object's centre and size, occluded alike
       misfit       = |(P Δ F_t) beyond 1 px of F_t's edge| / |F_t|   lumps and notches (F_t: the
                                                           fitted target footprint)
       halo_px      = tinted pixels (chroma >= HALO_CHROMA, not the target colour) in a ring of
                      HALO_WIDTH px about F_t, other objects left out
       old_colour   = |object pixels of c_src about A_before| / |A_before|     (recolours; else 0)
       sharpness    = sqrt(Σ_E |∇edit|² / Σ_E |∇truth|²)   over the band E of ±2 px about the edge

   Footprints are fitted: the target shape (and each other shape, for the margin) may move by
   ``FIT_SHIFT`` px and scale by ``FIT_SCALES``, as a person does not see such changes at 64 px.
   A pixel is ``pure(c)`` when its nearest palette colour is c and it lies within ``PURE_DISTANCE``
   of it (RGB, 0..255): a blend of object and background (blur, a smear) is no colour at all.
   ``sharpness`` compares the edges' gradient energy with the ground truth's: a blur spreads an edge,
   which keeps the sum of |∇| but lowers the sum of its squares (a Gaussian of σ px: about
   1 / sqrt(2 σ sqrt(π)) of a sharp edge's).
2. **Other objects**, each over the whole image: ``IoU(pure(c_j) \\ F_{k≠j}, V_j)`` with its own
   footprint V_j (pixels of its colour anywhere else, a swelling or a copy, count against it);
   V_j may move by 1 px; ``others_iou`` is the least of them (1.0 without others).
3. **Background blobs**: the largest 4-connected set of chromatic pixels (chroma >= ``MIN_CHROMA``)
   outside every footprint, old and new, dilated by ``EDGE`` px, leaving out each object's own colour
   within 2 px of it (judged above): ``blob_px``.
4. **Background fidelity**: PSNR (dB) of the edit against the input over the same background pixels.

Verdicts (``Thresholds``; the calibrated values are ``THRESHOLDS``):

    success = object_iou >= min_object_iou and shape_margin >= min_shape_margin
              and misfit <= max_misfit and halo_px <= max_halo_px
              and old_colour <= max_old_colour and sharpness >= min_sharpness
    clean   = success and others_iou >= min_others_iou and blob_px < min_blob_px
              and background_psnr >= min_background_psnr

The thresholds were set on the tuning half of a set of edits labelled by eye and checked on the other
half (``benchmarks.quality.calibration``; the labels, the written rule and the agreement figures are in
``benchmarks/quality/labels/``). Pixel distances (neighbourhood, edge, blob size) are for 64 px scenes
and scale with the side.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
from PIL import Image, ImageFilter

from diffedit.shapes.classify import MIN_CHROMA, object_pixels
from diffedit.shapes.scenes import EditTask, shape_mask
from diffedit.shapes.vocab import OBJECT_COLOURS, SHAPES

#: RGB distance (0..255) within which a pixel shows a palette colour.
PURE_DISTANCE = 60.0
#: Pixels around the old and new footprints where the edited object is looked for (64 px scene).
NEIGHBOURHOOD = 6
#: Pixels around every footprint left out of the background checks: edges blend (64 px scene).
EDGE = 1
#: The ring about the edited object where tinted pixels make a halo (px, 64 px scene), and the least
#: chroma (0..255) of a tinted pixel (backgrounds have 0, palette colours >= 130).
HALO_WIDTH = 3
HALO_CHROMA = 40
#: How far (px, 64 px scene) and by what factors the ground-truth footprint may move and scale to fit
#: the edited object: a person does not see a 2 px shift or a 15 % change of size at this scale.
FIT_SHIFT = 3
FIT_SCALES = (0.85, 1.0, 1.15)


@dataclass(frozen=True)
class Thresholds:
    """The verdicts' thresholds (module docstring); ``THRESHOLDS`` are the calibrated ones."""

    min_object_iou: float = 0.70  # IoU of the target-coloured pixels with the fitted footprint
    min_shape_margin: float = 0.05  # lead of that IoU over any other shape's
    max_misfit: float = 0.10  # pixels more than 1 px off the fitted footprint, per footprint pixel
    max_halo_px: int = 60  # tinted pixels about the object: a ring or frame of the old colour, a bleed
    max_old_colour: float = 0.10  # share of the old footprint still in the old colour (recolours)
    min_sharpness: float = 0.5  # edge gradient energy relative to the ground truth's, square-rooted
    min_others_iou: float = 0.70  # every other object's IoU with its own footprint
    min_blob_px: int = 6  # a chromatic blob of this many pixels (64 px scene) spoils the background
    min_background_psnr: float = 20.0  # dB, background against the input

    def verdict(self, m: Judgement, scale: float = 1.0) -> tuple[bool, bool, str]:
        """(success, clean, the first failed check or "") of measurements ``m`` on a scene of
        ``scale`` x 64 px."""
        checks = [
            (m.object_iou >= self.min_object_iou, f"object IoU {m.object_iou:.2f} < {self.min_object_iou}"),
            (
                m.shape_margin >= self.min_shape_margin,
                f"shape margin {m.shape_margin:.2f} < {self.min_shape_margin}",
            ),
            (
                m.old_colour <= self.max_old_colour,
                f"old colour left {m.old_colour:.2f} > {self.max_old_colour}",
            ),
            (m.sharpness >= self.min_sharpness, f"sharpness {m.sharpness:.2f} < {self.min_sharpness}"),
        ]
        success = all(ok for ok, _ in checks)
        checks += [
            (
                m.others_iou >= self.min_others_iou,
                f"another object's IoU {m.others_iou:.2f} < {self.min_others_iou}",
            ),
            (m.blob_px < round(self.min_blob_px * scale**2), f"a {m.blob_px} px blob on the background"),
            (
                m.background_psnr >= self.min_background_psnr,
                f"background {m.background_psnr:.1f} dB < {self.min_background_psnr}",
            ),
        ]
        clean = all(ok for ok, _ in checks)
        return success, clean, next((why for ok, why in checks if not ok), "")


#: The calibrated thresholds: ``python -m benchmarks.quality.calibration tune`` (the tuning half of the
#: labelled set; the ground truth and its VAE reconstruction pass, every broken edit fails).
THRESHOLDS = Thresholds(
    min_object_iou=0.8,
    min_shape_margin=0.0,
    max_misfit=0.06,
    max_halo_px=45,
    max_old_colour=0.05,
    min_sharpness=0.5,
    min_others_iou=0.8,
    min_blob_px=6,
    min_background_psnr=22.0,
)
#: PSNR of an exact copy (MSE 0), in dB.
PSNR_CAP_DB = 100.0

_PALETTE = np.array(list(OBJECT_COLOURS.values()), dtype=np.float64)  # (K, 3)
_NAMES = list(OBJECT_COLOURS)


@dataclass(frozen=True)
class Judgement:
    """The verdicts and the measurements behind them (module docstring)."""

    success: bool
    clean: bool
    object_iou: float  # IoU of the target-coloured pixels with the ground-truth footprint
    shape_margin: float  # object_iou minus the best IoU of another shape at the same place
    misfit: float  # pixels off the fitted footprint by more than 1 px (lumps, notches), per its pixel
    halo_px: int  # tinted pixels (chroma >= HALO_CHROMA, not the target colour) in a ring about it
    old_colour: float  # share of the old footprint still in the old colour (recolours; else 0)
    sharpness: float  # the edges' gradient energy relative to the ground truth's, square-rooted
    others_iou: float  # least IoU of another object with its own footprint (1.0 without others)
    blob_px: int  # largest chromatic blob on the background, pixels
    background_psnr: float  # dB, edit vs input, outside every footprint (dilated)
    reason: str  # the first failed check, "" when clean

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def under(self, thresholds: Thresholds, scale: float = 1.0) -> Judgement:
        """These measurements judged with ``thresholds`` (scene of ``scale`` x 64 px)."""
        success, clean, reason = thresholds.verdict(self, scale)
        return replace(self, success=success, clean=clean, reason=reason)


def _rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    """An image as float64 RGB in 0..255.  # (H, W, 3)"""
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.float64)


def pure_colours(rgb: np.ndarray) -> np.ndarray:
    """Palette index of every pixel that shows a palette colour, -1 elsewhere.  # (H, W) int"""
    dist = np.sqrt(((rgb[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1))  # (H, W, K)
    nearest = dist.argmin(-1)  # (H, W)
    return np.where(np.take_along_axis(dist, nearest[..., None], -1)[..., 0] <= PURE_DISTANCE, nearest, -1)


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    """``mask`` grown by ``px`` pixels (a (2 px + 1)-square max filter).  # (H, W) bool"""
    if px <= 0:
        return mask.copy()
    img = Image.fromarray(mask.astype(np.uint8) * 255, "L").filter(ImageFilter.MaxFilter(2 * px + 1))
    return np.asarray(img) > 127


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """|a ∩ b| / |a ∪ b| of two (H, W) bool masks; 1.0 when both are empty."""
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def largest_component(mask: np.ndarray) -> int:
    """Pixels in the largest 4-connected component of ``mask`` (H, W) bool; 0 when empty."""
    h, w = mask.shape
    seen = np.zeros_like(mask)
    best = 0
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        stack, size = [(y0, x0)], 0
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        best = max(best, size)
    return best


def psnr_from_mse(mse: float, peak: float = 255.0) -> float:
    """10 log10(peak^2 / mse) in dB, capped at ``PSNR_CAP_DB`` (an exact copy has mse = 0)."""
    if mse <= 0.0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(peak * peak / mse))


def gradient_energy(rgb: np.ndarray) -> np.ndarray:
    """|∇|² of an RGB image (forward differences, summed over channels; 0 past the last row/column).
    # (H, W)"""
    energy = np.zeros(rgb.shape[:2])  # (H, W)
    energy[:, :-1] += ((rgb[:, 1:] - rgb[:, :-1]) ** 2).sum(-1)
    energy[:-1, :] += ((rgb[1:] - rgb[:-1]) ** 2).sum(-1)
    return energy


def edge_band(mask: np.ndarray, px: int) -> np.ndarray:
    """The pixels within ``px`` of the edge of ``mask`` (H, W) bool, on either side.  # (H, W) bool"""
    edge = dilate(mask, 1) & dilate(~mask, 1)  # (H, W): both sides of the boundary
    return dilate(edge, px - 1) if px > 1 else edge


def shifted(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``mask`` moved by (dy, dx) pixels, nothing wrapping round.  # (H, W) bool"""
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)] = mask[
        max(0, -dy) : h + min(0, -dy), max(0, -dx) : w + min(0, -dx)
    ]
    return out


def best_fit(shown: np.ndarray, shape: str, task: EditTask) -> tuple[float, np.ndarray]:
    """The best IoU of ``shown`` with ``shape`` drawn where the edited object stands, moved by up to
    ``FIT_SHIFT`` px and scaled by each of ``FIT_SCALES``, hidden by the objects in front of it; and
    that footprint.  # float, (H, W) bool"""
    cx, cy, r = task.object_geometry
    if math.isnan(r) or task.occluder is None:
        raise ValueError(f"task {task.id} carries no object geometry (made by an older scenes module)")
    size = task.image.height
    reach = round(FIT_SHIFT * size / 64)
    best, where = -1.0, shown
    for k in FIT_SCALES:
        drawn = shape_mask(shape, cx, cy, r * k, size)  # (H, W)
        for dy in range(-reach, reach + 1):
            for dx in range(-reach, reach + 1):
                footprint = shifted(drawn, dy, dx) & ~task.occluder  # (H, W)
                score = iou(shown, footprint)
                if score > best:
                    best, where = score, footprint
    return best, where


def others_of_colour(task: EditTask, colour: str) -> np.ndarray:
    """The footprints (in the target scene) of the other objects of ``colour``.  # (H, W) bool"""
    return np.logical_or.reduce(
        [np.zeros_like(task.region), *(np.asarray(m, dtype=bool) for c, _, m in task.others if c == colour)]
    )


def judge(task: EditTask, image: Image.Image | np.ndarray, thresholds: Thresholds | None = None) -> Judgement:
    """The strict verdict on ``image`` as an edit of ``task`` (module docstring), with ``thresholds``
    (the calibrated ``THRESHOLDS`` by default)."""
    thresholds = thresholds or THRESHOLDS
    rgb = _rgb(image)  # (H, W, 3)
    if rgb.shape[:2] != task.region.shape:
        raise ValueError(f"image size {rgb.shape[1::-1]} != the task's {task.region.shape[::-1]}")
    scale = task.region.shape[0] / 64.0
    colours = pure_colours(rgb)  # (H, W)
    target, before = task.object_mask_after, task.object_mask_before  # (H, W) each
    footprints = [target] + [np.asarray(m, dtype=bool) for _, _, m in task.others]
    others_all = np.logical_or.reduce([np.zeros_like(target), *footprints[1:]])  # (H, W)
    same_colour = others_of_colour(task, task.target_colour)  # (H, W): their pixels are theirs

    # 1. the edited object: the target shape fitted where it stands, and every other shape
    tc = _NAMES.index(task.target_colour)
    near = dilate(before | target, round(NEIGHBOURHOOD * scale))  # (H, W)
    shown = (colours == tc) & near & ~same_colour  # (H, W)
    object_iou, fitted = best_fit(shown, task.target_shape, task)
    shape_margin = object_iou - max(best_fit(shown, s, task)[0] for s in SHAPES if s != task.target_shape)
    width = round(2 * scale)
    truth_energy = float(gradient_energy(_rgb(task.target_image))[edge_band(target, width)].sum())
    edit_energy = float(gradient_energy(rgb)[edge_band(fitted, width)].sum())
    sharpness = math.sqrt(edit_energy / max(truth_energy, 1e-9))
    chroma = rgb.max(-1) - rgb.min(-1)  # (H, W)
    ring = dilate(fitted, round(HALO_WIDTH * scale)) & ~fitted & ~dilate(others_all, 1)  # (H, W)
    halo_px = int(((chroma >= HALO_CHROMA) & ring & (colours != tc)).sum())
    misfit = float((((shown ^ fitted) & ~edge_band(fitted, 1)).sum()) / max(1, fitted.sum()))
    old_colour = 0.0
    if task.kind == "recolor" and before.any():
        # any object pixel (classify's: chromatic, by nearest palette colour) of the old colour on or
        # about the old footprint: rims count
        is_obj, nearest = object_pixels(rgb)  # (H, W) each
        old = is_obj & (nearest == _NAMES.index(task.source_colour)) & dilate(before, round(scale))
        old_colour = float((old & ~others_of_colour(task, task.source_colour)).sum() / before.sum())

    # 2. every other object, over the whole image, allowed a 1 px shift
    others_iou = 1.0
    for j, (colour, _shape, mask) in enumerate(task.others, start=1):
        rest = np.logical_or.reduce([f for k, f in enumerate(footprints) if k != j])  # (H, W)
        mine = (colours == _NAMES.index(colour)) & ~rest  # (H, W)
        fit = max(iou(mine, shifted(mask, dy, dx)) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
        others_iou = min(others_iou, fit)

    # 3, 4. the background: outside every footprint, old and new, and their edges
    background = ~dilate(before | target | others_all, round(EDGE * scale))  # (H, W)
    own = shown.copy()  # the objects' own colours about them: judged above, not blobs
    for colour, _shape, mask in task.others:
        own |= (colours == _NAMES.index(colour)) & dilate(np.asarray(mask, dtype=bool), round(2 * scale))
    blob_px = largest_component((chroma >= MIN_CHROMA) & background & ~own)
    diff = rgb[background] - _rgb(task.image)[background]  # (N, 3)
    background_psnr = psnr_from_mse(float(np.mean(diff**2)) if diff.size else 0.0)

    measured = Judgement(
        success=False,
        clean=False,
        object_iou=object_iou,
        shape_margin=shape_margin,
        misfit=misfit,
        halo_px=halo_px,
        old_colour=old_colour,
        sharpness=sharpness,
        others_iou=others_iou,
        blob_px=blob_px,
        background_psnr=background_psnr,
        reason="",
    )
    return measured.under(thresholds, scale)

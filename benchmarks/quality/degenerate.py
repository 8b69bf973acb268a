"""Broken "edits" of a task that any judge of edit quality must fail, and the ground truth it must pass.

Each is a pure function (task) -> RGB image at the task's size, built from the task's own ground truth
so that it fails in exactly one way. The judge's tests require every one of them to fail (``success`` or
``clean``, as ``DEGENERATE`` says) and the rendered target to pass; ``calibration`` reports how often
each passes over a whole task stream.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from diffedit.shapes.judge import dilate
from diffedit.shapes.scenes import EditTask, shape_mask
from diffedit.shapes.vocab import OBJECT_COLOURS


def _paint(image: Image.Image, mask: np.ndarray, colour: str) -> Image.Image:
    """``image`` with the (H, W) bool ``mask`` painted in the named palette colour."""
    arr = np.array(image.convert("RGB"))  # (H, W, 3) uint8
    arr[mask] = OBJECT_COLOURS[colour]
    return Image.fromarray(arr, "RGB")


def _background(task: EditTask) -> np.ndarray:
    """The input with the edited object removed: each of its pixels takes the mean of the background
    pixels of its row (the texture's level there).  # (H, W, 3) uint8"""
    arr = np.array(task.image.convert("RGB"))  # (H, W, 3)
    objects = task.object_mask_before | np.logical_or.reduce(
        [np.zeros_like(task.region), *(m for _, _, m in task.others)]
    )  # (H, W)
    for y in range(arr.shape[0]):
        free = ~objects[y]
        fill = arr[y][free].mean(0) if free.any() else np.full(3, 128.0)
        arr[y][task.object_mask_before[y]] = fill.round().astype(np.uint8)
    return arr


def blank(task: EditTask) -> Image.Image:
    """A uniform grey canvas."""
    return Image.new("RGB", task.image.size, (128, 128, 128))


def painted_canvas(task: EditTask) -> Image.Image:
    """The whole image painted in the target colour."""
    return Image.new("RGB", task.image.size, OBJECT_COLOURS[task.target_colour])


def erased(task: EditTask) -> Image.Image:
    """The edited object removed, nothing drawn in its place."""
    return Image.fromarray(_background(task), "RGB")


def erased_plus_circle(task: EditTask) -> Image.Image:
    """The object erased and a circle of the target colour drawn at its centre with its size (for a
    task whose target is a circle, a square: a circle there would be the right answer)."""
    cx, cy, r = task.object_geometry
    shape = "square" if task.target_shape == "circle" else "circle"
    disc = shape_mask(shape, cx, cy, r, task.image.height) & ~task.occluder
    return _paint(Image.fromarray(_background(task), "RGB"), disc, task.target_colour)


def others_swollen(task: EditTask) -> Image.Image:
    """The right edit, and every other object swollen into a blob (grown by 4 px at 64 px)."""
    image = task.target_image.convert("RGB")
    grow = max(1, round(4 * task.image.height / 64))
    for colour, _shape, mask in task.others:
        image = _paint(image, dilate(np.asarray(mask, dtype=bool), grow) & ~task.object_mask_after, colour)
    return image


def blurred(task: EditTask) -> Image.Image:
    """The ground truth blurred (Gaussian, radius 2 at 64 px): shapes melt into the background."""
    return task.target_image.convert("RGB").filter(ImageFilter.GaussianBlur(2 * task.image.height / 64))


def speck(task: EditTask) -> Image.Image:
    """The input with a 4 x 4 speck of the target colour at the object's centre."""
    cx, cy, _ = task.object_geometry
    mask = np.zeros(task.region.shape, dtype=bool)
    y0, x0 = round(cy) - 2, round(cx) - 2
    mask[max(0, y0) : y0 + 4, max(0, x0) : x0 + 4] = True
    return _paint(task.image, mask, task.target_colour)


def extra_star(task: EditTask) -> Image.Image:
    """The right edit plus a new star (radius 6 at 64 px, in a colour no object has) painted on the
    background, where it touches no object: a perfect edit that is not clean."""
    size = task.image.height
    r = 6 * size / 64
    taken = dilate(
        task.region | np.logical_or.reduce([np.zeros_like(task.region), *(m for _, _, m in task.others)]), 2
    )
    used = {task.target_colour, *(c for c, _, _ in task.others)}
    colour = next(c for c in OBJECT_COLOURS if c not in used)  # a colour no object of the scene has
    for cy in np.linspace(r + 2, size - r - 2, 7):
        for cx in np.linspace(r + 2, size - r - 2, 7):
            star = shape_mask("star", float(cx), float(cy), r, size)
            if not (star & taken).any():
                return _paint(task.target_image, star, colour)
    return _paint(task.target_image, shape_mask("star", r + 2, r + 2, r, size) & ~taken, colour)


#: Each broken edit and the verdict it must lose: "success" (the edit itself is wrong) or "clean"
#: (the edit is right, the rest of the image is not).
DEGENERATE: dict[str, tuple[Callable[[EditTask], Image.Image], str]] = {
    "blank": (blank, "success"),
    "painted_canvas": (painted_canvas, "success"),
    "erased": (erased, "success"),
    "erased_plus_circle": (erased_plus_circle, "success"),
    "others_swollen": (others_swollen, "clean"),
    "blurred": (blurred, "success"),
    "speck": (speck, "success"),
    "extra_star": (extra_star, "clean"),
}

"""Synthetic scenes of coloured shapes with captions, exact per-object masks and edit tasks.

A scene is 1-3 flat-coloured shapes (``vocab.SHAPES`` x ``vocab.OBJECT_COLOURS``) on a textured
achromatic background (``vocab.BACKGROUND_COLOURS`` x ``vocab.TEXTURES``), drawn without
anti-aliasing so every pixel belongs to exactly one object or to the background: each object's mask
is the exact set of pixels painted in its colour (its visible part, after occlusion by objects drawn
later). Captions list the objects left to right: "a red circle and a blue square on a grey striped
background". No scene holds two objects of the same colour and shape, so a caption names each
object unambiguously.

Everything is a pure function of an integer seed (numpy ``default_rng(seed)``).

Seed ranges (keep them disjoint):

* ``TRAIN_SEEDS`` = [0, 10_000_000): scenes the model is trained on (``sample_scene(seed)``).
* ``train_edit_pair(seed)`` edits training scenes as ``make_edit_tasks`` edits held-out ones
  (training seeds only), for models that learn from edit pairs (``diffedit.shapes.dataset``).
* ``EVAL_SEED_BASE`` = 1_000_000_000 and above: held-out edit tasks. ``make_edit_tasks(seed, n)``
  draws its scenes from seeds ``EVAL_SEED_BASE + seed * 1_000_003 + k``, k = 0, 1, ..., so for
  any ``seed`` >= 0 none of them is a training scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from diffedit.shapes.vocab import BACKGROUND_COLOURS, OBJECT_COLOURS, SHAPES, TEXTURES

#: Scene seeds used for training.
TRAIN_SEEDS = range(0, 10_000_000)
#: First scene seed of held-out evaluation tasks.
EVAL_SEED_BASE = 1_000_000_000
#: Probabilities of 1, 2 and 3 objects in a scene.
N_OBJECT_PROBS = (0.4, 0.35, 0.25)
#: Least visible fraction of every object's own footprint after occlusion.
MIN_VISIBLE = 0.6


@dataclass(frozen=True)
class SceneObject:
    """One shape in a scene. ``mask`` is its visible footprint (exact painted pixels)."""

    shape: str
    colour: str
    cx: float  # centre, pixels
    cy: float
    radius: float  # half-size, pixels
    mask: np.ndarray = field(repr=False)  # (H, W) bool, visible pixels
    full_mask: np.ndarray = field(repr=False)  # (H, W) bool, footprint before occlusion

    @property
    def phrase(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Background:
    """A textured achromatic background: named colour plus texture parameters."""

    colour: str
    texture: str
    params: tuple[float, ...]  # texture parameters (see ``render_background``)

    @property
    def phrase(self) -> str:
        return f"{self.colour} {self.texture} background"


@dataclass(frozen=True)
class Scene:
    """A rendered scene: image, caption and objects (back to front) with exact masks."""

    image: Image.Image = field(repr=False)  # RGB, size x size
    caption: str
    objects: list[SceneObject]
    background: Background
    seed: int
    size: int

    @property
    def background_description(self) -> str:
        return self.background.phrase


@dataclass(frozen=True)
class EditTask:
    """One edit of one object of a held-out scene, with its ground truth."""

    id: str
    seed: int  # the scene seed
    kind: str  # "recolor" | "reshape"
    image: Image.Image = field(repr=False)  # input scene
    caption: str  # reference caption (describes ``image``)
    query: str  # caption of the edited scene
    region: np.ndarray = field(repr=False)  # (H, W) bool: object_mask_before | object_mask_after
    object_index: int  # index of the edited object in the scene's objects (back to front)
    source_colour: str
    source_shape: str
    target_colour: str
    target_shape: str
    object_mask_before: np.ndarray = field(repr=False)  # (H, W) bool, visible pixels before
    object_mask_after: np.ndarray = field(repr=False)  # (H, W) bool, visible pixels after
    target_image: Image.Image = field(repr=False)  # the scene rendered with the edit applied
    n_objects: int = 1  # objects in the scene
    others: tuple[tuple[str, str, np.ndarray], ...] = field(default=(), repr=False)  # every other
    #   object as (colour, shape, (H, W) bool visible pixels in ``target_image``): what a clean edit keeps
    object_geometry: tuple[float, float, float] = (math.nan, math.nan, math.nan)  # the edited object's
    #   centre x, centre y and half-size (pixels): where any of its shapes would be drawn
    occluder: np.ndarray | None = field(default=None, repr=False)  # (H, W) bool: the full footprints of
    #   the objects drawn after the edited one (what hides part of it, whatever its shape)


# --------------------------------------------------------------------------- rendering


def shape_mask(shape: str, cx: float, cy: float, radius: float, size: int) -> np.ndarray:
    """The exact footprint of a shape, drawn by PIL without anti-aliasing.  # (size, size) bool"""
    canvas = Image.new("1", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    r = radius
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    elif shape == "square":
        h = 0.85 * r  # about the circle's area
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=1)
    elif shape == "triangle":  # apex up, centred on its bounding box
        draw.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], fill=1)
    elif shape == "star":  # five points, point up
        pts = []
        for k in range(10):
            rad = 1.15 * r if k % 2 == 0 else 0.5 * r
            ang = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(ang), cy + 0.1 * r + rad * math.sin(ang)))
        draw.polygon(pts, fill=1)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.array(canvas, dtype=bool)


def render_background(background: Background, size: int) -> np.ndarray:
    """The background image, float RGB in 0..255.  # (size, size, 3)

    Textures vary the brightness of the named colour (it stays achromatic):
    ``gradient`` params (angle, amplitude): linear ramp; ``striped`` (angle, period, phase,
    amplitude): soft stripes; ``cloudy`` (amplitude, 16 grid values): a bicubically upsampled 4x4
    random field.
    """
    base = np.array(BACKGROUND_COLOURS[background.colour], dtype=np.float64)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) / size  # (size, size) each, in [0, 1)
    p = background.params
    if background.texture == "gradient":
        angle, amp = p[0], p[1]
        u = (xs - 0.5) * math.cos(angle) + (ys - 0.5) * math.sin(angle)  # in about [-0.7, 0.7]
        delta = amp * 2.0 * u
    elif background.texture == "striped":
        angle, period, phase, amp = p[0], p[1], p[2], p[3]
        u = xs * math.cos(angle) + ys * math.sin(angle)
        delta = amp * np.tanh(2.5 * np.sin(2 * math.pi * (u * size / period + phase)))
    elif background.texture == "cloudy":
        amp = p[0]
        grid = np.array(p[1:17], dtype=np.float32).reshape(4, 4)  # values in [-1, 1]
        field_img = Image.fromarray(grid, mode="F").resize((size, size), Image.BICUBIC)
        delta = amp * np.asarray(field_img, dtype=np.float64)
    else:
        raise ValueError(f"unknown texture {background.texture!r}")
    img = base[None, None, :] + delta[:, :, None]  # (size, size, 3)
    return np.clip(img, 0.0, 255.0)


def render_scene(
    background: Background,
    objects: list[tuple[str, str, float, float, float]],
    size: int,
) -> tuple[Image.Image, list[np.ndarray], list[np.ndarray]]:
    """Draw objects (shape, colour, cx, cy, radius), back to front, on a background.

    Returns the RGB image, the visible mask of each object and its full footprint.
    """
    img = np.round(render_background(background, size)).astype(np.uint8)  # (size, size, 3)
    full = [shape_mask(s, cx, cy, r, size) for s, _, cx, cy, r in objects]
    visible: list[np.ndarray] = []
    for i, (_, colour, *_rest) in enumerate(objects):
        img[full[i]] = OBJECT_COLOURS[colour]
        covered = np.zeros((size, size), dtype=bool)
        for later in full[i + 1 :]:
            covered |= later
        visible.append(full[i] & ~covered)
    return Image.fromarray(img, mode="RGB"), visible, full


def article(word: str) -> str:
    """The indefinite article before ``word``."""
    return "an" if word[0] in "aeiou" else "a"


def caption_for(objects: list[SceneObject] | list[tuple[str, str, float]], background: Background) -> str:
    """Plain-English caption: objects left to right (by centre x), then the background."""
    items = [(o.colour, o.shape, o.cx) if isinstance(o, SceneObject) else o for o in objects]
    items = sorted(items, key=lambda it: it[2])
    phrases = [f"{article(colour)} {colour} {shape}" for colour, shape, _ in items]
    return " and ".join(phrases) + f" on a {background.phrase}"


# --------------------------------------------------------------------------- sampling


def _sample_background(rng: np.random.Generator) -> Background:
    colour = str(rng.choice(list(BACKGROUND_COLOURS)))
    texture = str(rng.choice(list(TEXTURES)))
    if texture == "gradient":
        params: tuple[float, ...] = (float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(20, 35)))
    elif texture == "striped":
        angle = float(rng.choice([0.0, math.pi / 2, math.pi / 4, 3 * math.pi / 4]))
        params = (angle, float(rng.uniform(10, 18)), float(rng.uniform(0, 1)), float(rng.uniform(15, 25)))
    else:
        params = (float(rng.uniform(20, 30)), *(float(v) for v in rng.uniform(-1, 1, size=16)))
    return Background(colour, texture, params)


def _sample_layout(
    rng: np.random.Generator, n: int, size: int
) -> list[tuple[str, str, float, float, float]] | None:
    """Objects with distinct (colour, shape), each at least ``MIN_VISIBLE`` visible; None if stuck."""
    scale = size / 64.0
    pairs = [(s, c) for s in SHAPES for c in OBJECT_COLOURS]
    chosen = rng.choice(len(pairs), size=n, replace=False)
    objects: list[tuple[str, str, float, float, float]] = []
    for idx in chosen:
        shape, colour = pairs[int(idx)]
        for _ in range(50):
            r = float(rng.uniform(8.0, 14.0)) * scale
            margin = 1.2 * r + 1
            cx = float(rng.uniform(margin, size - margin))
            cy = float(rng.uniform(margin, size - margin))
            cand = [*objects, (shape, colour, cx, cy, r)]
            full = [shape_mask(s, x, y, rr, size) for s, _, x, y, rr in cand]
            ok = True
            for i in range(len(cand)):
                covered = np.zeros((size, size), dtype=bool)
                for later in full[i + 1 :]:
                    covered |= later
                if (full[i] & ~covered).sum() < MIN_VISIBLE * full[i].sum():
                    ok = False
                    break
            if ok:
                objects = cand
                break
        else:
            return None
    return objects


def sample_scene(seed: int, size: int = 64, n_objects: int | None = None) -> Scene:
    """The scene of ``seed``: deterministic. ``n_objects`` (1-3) overrides the drawn count."""
    if size < 32 or size % 4:
        raise ValueError(f"size must be a multiple of 4 and at least 32, got {size}")
    rng = np.random.default_rng(seed)
    n = int(rng.choice([1, 2, 3], p=N_OBJECT_PROBS))
    if n_objects is not None:
        n = n_objects
    background = _sample_background(rng)
    layout = None
    while layout is None:  # very rarely needed more than once
        layout = _sample_layout(rng, n, size)
    image, visible, full = render_scene(background, layout, size)
    objects = [
        SceneObject(shape=s, colour=c, cx=x, cy=y, radius=r, mask=v, full_mask=f)
        for (s, c, x, y, r), v, f in zip(layout, visible, full, strict=True)
    ]
    return Scene(
        image=image,
        caption=caption_for(objects, background),
        objects=objects,
        background=background,
        seed=seed,
        size=size,
    )


# --------------------------------------------------------------------------- edit tasks


def edit_task(scene: Scene, index: int, kind: str, rng: np.random.Generator) -> EditTask | None:
    """Edit object ``index`` of ``scene``; None when the result would be ambiguous or invisible."""
    obj = scene.objects[index]
    others = {(o.colour, o.shape) for j, o in enumerate(scene.objects) if j != index}
    if kind == "recolor":
        options = [(c, obj.shape) for c in OBJECT_COLOURS if c != obj.colour]
    elif kind == "reshape":
        options = [(obj.colour, s) for s in SHAPES if s != obj.shape]
    else:
        raise ValueError(f"unknown edit kind {kind!r}")
    options = [o for o in options if o not in others]  # the query must name each object uniquely
    if not options:
        return None
    colour, shape = options[int(rng.integers(len(options)))]
    layout = [(o.shape, o.colour, o.cx, o.cy, o.radius) for o in scene.objects]
    layout[index] = (shape, colour, obj.cx, obj.cy, obj.radius)
    target_image, visible, full = render_scene(scene.background, layout, scene.size)
    after = visible[index]
    if after.sum() < MIN_VISIBLE * full[index].sum():
        return None  # the new shape would be mostly hidden
    edited = [(c, s, o.cx) for (s, c, *_), o in zip(layout, scene.objects, strict=True)]
    return EditTask(
        id=f"shapes-{scene.seed}-{kind}-{index}",
        seed=scene.seed,
        kind=kind,
        image=scene.image,
        caption=scene.caption,
        query=caption_for(edited, scene.background),
        region=obj.mask | after,
        object_index=index,
        source_colour=obj.colour,
        source_shape=obj.shape,
        target_colour=colour,
        target_shape=shape,
        object_mask_before=obj.mask,
        object_mask_after=after,
        target_image=target_image,
        n_objects=len(scene.objects),
        others=tuple((o.colour, o.shape, visible[j]) for j, o in enumerate(scene.objects) if j != index),
        object_geometry=(obj.cx, obj.cy, obj.radius),
        occluder=np.logical_or.reduce([np.zeros_like(after), *full[index + 1 :]]),
    )


def eval_scene_seed(seed: int, k: int) -> int:
    """The k-th held-out scene seed of task stream ``seed`` (never a training seed)."""
    if seed < 0 or k < 0:
        raise ValueError("seed and k must be non-negative")
    return EVAL_SEED_BASE + seed * 1_000_003 + k


def make_edit_tasks(
    seed: int,
    n: int,
    size: int = 64,
    kinds: tuple[str, ...] = ("recolor", "reshape"),
    max_objects: int = 3,
    n_objects: int | None = None,
) -> list[EditTask]:
    """``n`` held-out edit tasks, deterministic for ``seed``; kinds alternate in the given order.

    Each task edits one object of a fresh held-out scene (scene seeds from ``eval_scene_seed``):
    recolour it (same shape, another colour) or reshape it (same colour, same centre and size,
    another shape). Tasks whose query would name two identical objects, or whose new object would
    be mostly hidden, are skipped; so are tasks whose object touches another of the same colour
    (``same_colour_contact``: the edit cannot be told apart) and scenes with more than ``max_objects``
    objects. The scene
    of a task is ``sample_scene(task.seed, size)``, or with ``n_objects`` (1-3, a forced count, e.g.
    the benchmark's 3-object slice) ``sample_scene(task.seed, size, n_objects)``.
    """
    tasks: list[EditTask] = []
    k = 0
    while len(tasks) < n:
        scene_seed = eval_scene_seed(seed, k)
        k += 1
        kind = kinds[len(tasks) % len(kinds)]
        scene = sample_scene(scene_seed, size, n_objects)  # exactly the scene of sample_scene(seed)
        if len(scene.objects) > max_objects:
            continue
        task = _held_out_task(scene, kind)
        if task is not None and not same_colour_contact(task):
            tasks.append(task)
    return tasks


def _held_out_task(scene: Scene, kind: str) -> EditTask | None:
    """The edit ``make_edit_tasks`` draws for ``scene`` (object and target from ``[seed, 7]``)."""
    rng = np.random.default_rng([scene.seed, 7])
    return edit_task(scene, int(rng.integers(len(scene.objects))), kind, rng)


def same_colour_contact(task: EditTask) -> bool:
    """Whether the edited object, before or after the edit, touches (within 1 px) another object of
    the same colour: the two merge into one patch of colour, and no one, person or judge, can tell
    which shape the edit gave it. ``make_edit_tasks`` leaves such tasks out."""
    mine = task.object_mask_before | task.object_mask_after  # (H, W)
    grown = mine.copy()
    grown[1:] |= mine[:-1]
    grown[:-1] |= mine[1:]
    grown[:, 1:] |= mine[:, :-1]
    grown[:, :-1] |= mine[:, 1:]
    colours = {task.source_colour, task.target_colour}
    return any(colour in colours and (grown & mask).any() for colour, _shape, mask in task.others)


def task_from_id(task_id: str, size: int = 64) -> EditTask:
    """The held-out task ``make_edit_tasks`` made with id ``task_id`` ("shapes-<seed>-<kind>-<index>")
    at ``size``: its scene, object and target again (scenes drawn with their own object count)."""
    parts = task_id.split("-")
    if len(parts) != 4 or parts[0] != "shapes" or not parts[1].isdigit() or not parts[3].isdigit():
        raise ValueError(f"{task_id!r} is not a shapes task id (shapes-<seed>-<kind>-<index>)")
    seed, kind = int(parts[1]), parts[2]
    if kind not in ("recolor", "reshape"):
        raise ValueError(f"{task_id!r}: unknown edit kind {kind!r}")
    task = _held_out_task(sample_scene(seed, size), kind)
    if task is None or task.id != task_id:
        raise ValueError(f"{task_id!r} is not a task of make_edit_tasks (its scene draws another edit)")
    return task


def train_edit_pair(
    seed: int, size: int = 64, n_objects: int | None = None, p_recolor: float = 0.5
) -> EditTask:
    """An edit of the training scene of ``seed`` (``edit_task`` on ``sample_scene(seed, size, n_objects)``).

    Deterministic for ``seed``: the kind is "recolor" with probability ``p_recolor``, else "reshape",
    and the object is drawn uniformly. Should that edit be impossible (every other shape taken, or the
    new shape mostly hidden), the next objects and then the other kind are tried in a fixed order; a
    recolour always exists (5 other colours, at most 2 other objects), so every seed gives a pair.
    """
    if seed not in TRAIN_SEEDS:
        raise ValueError(f"seed {seed} is not a training seed (TRAIN_SEEDS = {TRAIN_SEEDS})")
    scene = sample_scene(seed, size, n_objects)
    rng = np.random.default_rng([seed, 11])
    first = "recolor" if rng.random() < p_recolor else "reshape"
    start = int(rng.integers(len(scene.objects)))
    for kind in (first, "reshape" if first == "recolor" else "recolor"):
        for k in range(len(scene.objects)):
            task = edit_task(scene, (start + k) % len(scene.objects), kind, rng)
            if task is not None:
                return task
    raise AssertionError(f"training scene {seed} has no possible recolour")  # see the docstring

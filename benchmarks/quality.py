"""Quality benchmark of DiffEdit on held-out edit tasks of the synthetic shapes world.

    python -m benchmarks.quality --model models/shapes-v3 --tasks 200 --ratios 0.5 0.7 0.9 --out out/quality

Every method edits the same tasks (``diffedit.shapes.scenes.make_edit_tasks``: scene seeds
>= 1_000_000_000, never used in training) with the same per-task seed (the task's scene seed), at
each encoding ratio r:

* ``diffedit``          ours (``DiffEditor``) at its defaults: mask, DDIM encode to r, masked decode;
* ``diffedit_paper``    ours with the paper's mask recipe (``params.PAPER_MASK``: threshold 0.5);
* ``diffedit_empty_ref`` the paper's RQ5 ablation: the paper's recipe with the empty prompt as the
                        mask's reference text (at the contact ratio only: r does not touch the mask);
* ``diffedit_paste``    the same edits with ``paste_background`` (the input's own pixels outside the
                        mask); derived from ``diffedit``'s output, no extra UNet evaluations;
* ``diffedit_gt_mask``  ours with the ground-truth region as the mask (upper bound of the mask step);
* ``diffedit_no_mask``  ours with an all-ones mask: DDIM encode and decode only;
* ``sdedit``            forward noising to r (``encode_method="noise"``), decode with the query, no mask;
* ``diffusers``         diffusers' deprecated ``StableDiffusionDiffEditPipeline`` at its defaults
                        (generate_mask(source=caption, target=query); invert(prompt=caption);
                        __call__(inpaint_strength=r)), one seeded generator per task;
* ``ledits``            diffusers' LEDITS++ (``benchmarks.quality_ledits``: settings and how they were
                        tuned), skip = 1 - r, one task per call; ``--peer-tasks`` limits it to the
                        first N tasks.

A forced 3-object recolour slice (``--three-object-tasks`` 40, stream ``--three-object-seed``
1000, ``THREE_OBJECT_METHODS`` at the contact ratio) is reported as ``slice`` =
``three_object_recolor``.

Two reference rows do not depend on r: ``vae_recon`` (decode(encode(x)), the ceiling of background
fidelity for any method that works in latent space) and ``target_render`` (the ground-truth edited
scene, rendered: the judge's accuracy on perfect edits).

Metrics per task (pure functions below), averaged per method and r:

* mask IoU: the method's binary mask at image resolution against the ground-truth region (the union
  of the object's old and new footprints), for methods that predict a mask; recolour and reshape
  tasks reported apart;
* background PSNR (dB, peak 255) and mean absolute error (0..255) over the pixels outside the region,
  edit against input;
* edit success: ``classify_region`` on the edited image inside the region; a recolour succeeds when
  the colour is the target colour, a reshape when the shape is the target shape and the colour is
  kept; overall, by kind and by the scene's object count (1 / 2 / 3);
* clean success: the edit succeeds AND every other object of the scene keeps its colour and shape
  (``classify.objects_kept`` over its visible pixels in the target scene);
* edits per second (wall clock of the method's whole run over the tasks, batched, this machine) and
  UNet sample-evaluations per edit.

Cost (measured before issue 12 added four methods and the slice; with them, LEDITS++ at one task
per call dominates: expect about 45 min on an idle 2-core CPU): the sweep runs every method at ``--steps`` 25 DDIM steps (all alike; the paper's and
diffusers' default is 50), and ours once more at its default 50 steps at r = 0.7: that row is the
one the mask-IoU target is read from, and the contact sheet's. On a 2-core CPU, torch on one thread
and one process scoring finished runs beside it, 200 tasks x 3 ratios took 1179 s (20 min) on
models/shapes-v2 (1339 s on shapes-v1, machine shared with other jobs, load 3-5); at 50 steps for
every method it would take about twice as long. ``diffedit_gt_mask``'s IoU is that of the region dilated to the latent grid (what
it edits); ``meta.json`` also holds the IoU ceiling of a perfect latent-grid mask.

Writes ``results.csv`` (one row per method x r), ``tasks.csv`` (one row per task x method x r),
``tradeoff.png`` (edit success against background PSNR, one line per method across r),
``contact_sheet.png`` (input | soft mask | binary mask | edit for 12 tasks, ours at r = 0.7) and
``meta.json``, and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from diffedit.bundle import ModelBundle
from diffedit.editor import DiffEditor, EditRequest, EditResult, paste_background
from diffedit.params import PAPER_MASK, EditParams
from diffedit.reference import UNetSampleCounter, deprecated_diffedit_pipeline
from diffedit.shapes.classify import MIN_PIXELS, classify_region, object_pixels, objects_kept
from diffedit.shapes.scenes import EditTask, make_edit_tasks
from diffedit.shapes.vocab import OBJECT_COLOURS

#: Methods that edit, in report order.
METHODS: tuple[str, ...] = (
    "diffedit",
    "diffedit_paper",
    "diffedit_empty_ref",
    "diffedit_paste",
    "diffedit_gt_mask",
    "diffedit_no_mask",
    "sdedit",
    "diffusers",
    "ledits",
)
#: Methods run at the contact ratio only: the RQ5 ablation changes the mask, which r does not touch.
ONE_RATIO_METHODS: tuple[str, ...] = ("diffedit_empty_ref",)
#: Methods of the forced 3-object recolour slice (run at the contact ratio).
THREE_OBJECT_METHODS: tuple[str, ...] = (
    "diffedit",
    "diffedit_paper",
    "diffedit_gt_mask",
    "sdedit",
    "diffusers",
    "ledits",
)
#: Variants of ours (``run_ours``).
OURS: tuple[str, ...] = (
    "diffedit",
    "diffedit_paper",
    "diffedit_empty_ref",
    "diffedit_gt_mask",
    "diffedit_no_mask",
    "sdedit",
)
#: Reference rows that do not depend on r.
REFERENCES: tuple[str, ...] = ("vae_recon", "target_render")
#: PSNR of an exact copy (MSE 0) is reported as this many dB rather than infinity.
PSNR_CAP_DB = 100.0

SUMMARY_COLUMNS: tuple[str, ...] = (
    "slice",
    "method",
    "ratio",
    "steps",
    "n",
    "n_recolor",
    "n_reshape",
    "mask_iou",
    "mask_iou_recolor",
    "mask_iou_reshape",
    "bg_psnr",
    "bg_psnr_recolor",
    "bg_psnr_reshape",
    "bg_mae",
    "success",
    "success_recolor",
    "success_reshape",
    "clean_success",
    "clean_success_recolor",
    "clean_success_reshape",
    "n_1obj",
    "n_2obj",
    "n_3obj",
    "success_1obj",
    "success_2obj",
    "success_3obj",
    "clean_success_1obj",
    "clean_success_2obj",
    "clean_success_3obj",
    "edits_per_s",
    "unet_evals_per_edit",
    "seconds",
)
TASK_COLUMNS: tuple[str, ...] = (
    "slice",
    "method",
    "ratio",
    "task_id",
    "kind",
    "n_objects",
    "seed",
    "caption",
    "query",
    "target_colour",
    "target_shape",
    "judged_colour",
    "judged_shape",
    "success",
    "others_kept",
    "clean_success",
    "mask_iou",
    "bg_psnr",
    "bg_mae",
    "unet_evals",
)


# =========================================================================== metrics (pure)


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


def psnr_from_mse(mse: float, peak: float = 255.0) -> float:
    """10 log10(peak^2 / mse) in dB, capped at ``PSNR_CAP_DB`` (an exact copy has mse = 0)."""
    if mse <= 0.0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(peak * peak / mse))


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


def region_colour(image: Image.Image | np.ndarray, region: np.ndarray) -> str:
    """The dominant named colour inside ``region`` exactly as ``classify_region`` reads it (object
    pixels vote for their nearest palette colour), without its shape fit; "none" when fewer than
    ``classify.MIN_PIXELS`` object pixels."""
    is_obj, nearest = object_pixels(image)
    inside = is_obj & np.asarray(region, dtype=bool)
    if inside.sum() < MIN_PIXELS:
        return "none"
    votes = np.bincount(nearest[inside], minlength=len(OBJECT_COLOURS))
    return list(OBJECT_COLOURS)[int(votes.argmax())]


def judge_edit(
    edited: Image.Image | np.ndarray,
    region: np.ndarray,
    kind: str,
    target_colour: str,
    target_shape: str,
) -> tuple[str, str, bool]:
    """(colour, shape, success) of the object the shapes classifier reads inside ``region``.

    A recolour succeeds when the colour is ``target_colour``; a reshape when the colour is
    ``target_colour`` (the kept colour, for a reshape task) and the shape is ``target_shape``.
    The shape fit (``classify_region``, about 0.1 s) runs only when it decides the outcome: for a
    reshape whose colour is right; otherwise shape is reported as "-".
    """
    if kind not in ("recolor", "reshape"):
        raise ValueError(f"unknown edit kind {kind!r}")
    region = np.asarray(region, dtype=bool)
    colour = region_colour(edited, region)
    if kind == "recolor" or colour != target_colour:
        return colour, "-", colour == target_colour
    colour, shape = classify_region(edited, region)
    return colour, shape, colour == target_colour and shape == target_shape


def judge_clean(edited: Image.Image | np.ndarray, task: EditTask, success: bool) -> tuple[float, bool]:
    """(others kept, clean success): a clean edit succeeds (``judge_edit``) AND every other object
    of the scene keeps its colour and shape (``classify.objects_kept`` over its visible pixels in
    the target scene). The others are read only when the edit succeeded (about 0.1 s each);
    otherwise ``others kept`` is NaN. A scene with one object has nothing else to keep."""
    if not success:
        return float("nan"), False
    kept = all(objects_kept(edited, task.others))
    return float(kept), kept


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


def _mean(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


# =========================================================================== runs


@dataclass
class MethodOutput:
    """One method's edit of one task."""

    image: Image.Image  # the edit, RGB, at the task's size
    mask_binary: np.ndarray | None = None  # (H, W) bool, the mask the method used; None: no mask
    mask_soft: np.ndarray | None = None  # (H, W) float32 in [0, 1]
    unet_evals: int = 0  # UNet sample-evaluations spent on this edit


@dataclass
class MethodRun:
    """One method at one ratio over all tasks."""

    method: str
    ratio: float  # nan for reference rows
    steps: int
    outputs: list[MethodOutput]
    seconds: float  # wall clock of the whole run
    predicts_mask: bool = False  # whether mask IoU is meaningful (a predicted mask)
    notes: dict[str, Any] = field(default_factory=dict)


def _ours_output(result: EditResult) -> MethodOutput:
    return MethodOutput(
        image=result.image,
        mask_binary=np.asarray(result.mask_binary) > 127,
        mask_soft=np.asarray(result.mask_soft, dtype=np.float32) / 255.0,
        unet_evals=int(result.counters["unet_evals"]),
    )


def run_ours(
    editor: DiffEditor,
    tasks: Sequence[EditTask],
    ratio: float,
    steps: int,
    variant: str,
    base: EditParams | None = None,
) -> tuple[MethodRun, list[EditResult]]:
    """Our editor on every task at encoding ratio ``ratio`` with ``steps`` DDIM steps.

    ``variant``: "diffedit" (predicted mask, ``base``'s mask options: the defaults unless given),
    "diffedit_paper" (the paper's mask recipe, ``PAPER_MASK``), "diffedit_empty_ref" (the paper's
    recipe with the empty prompt as the mask's reference text: the paper's RQ5 ablation),
    "diffedit_gt_mask" (the task's region as the mask), "diffedit_no_mask" (all-ones mask) or
    "sdedit" (noise encoding, all-ones mask). Returns the run and the raw results (for ``paste_run``).
    """
    params = (base or EditParams()).replace(num_inference_steps=steps, encode_ratio=ratio)
    if variant == "sdedit":
        params = params.replace(encode_method="noise")
    elif variant in ("diffedit_paper", "diffedit_empty_ref"):
        params = params.replace(**PAPER_MASK)
    elif variant not in ("diffedit", "diffedit_gt_mask", "diffedit_no_mask"):
        raise ValueError(f"unknown variant {variant!r}")
    requests = []
    for t in tasks:
        if variant in ("diffedit", "diffedit_paper", "diffedit_empty_ref"):
            mask = None
        elif variant == "diffedit_gt_mask":
            mask = np.asarray(t.region, dtype=bool)
        else:
            mask = np.ones((t.image.height, t.image.width), dtype=bool)
        requests.append(
            EditRequest(
                image=t.image,
                query=t.query,
                caption="" if variant == "diffedit_empty_ref" else t.caption,
                seed=int(t.seed),
                params=params,
                id=t.id,
                mask=mask,
            )
        )
    start = time.perf_counter()
    results = editor.edit(requests)
    seconds = time.perf_counter() - start
    outputs = [_ours_output(r) for r in results]
    run = MethodRun(
        method=variant,
        ratio=ratio,
        steps=steps,
        outputs=outputs,
        seconds=seconds,
        predicts_mask=variant not in ("diffedit_no_mask", "sdedit"),
    )
    return run, results


def paste_run(base: MethodRun, results: Sequence[EditResult], tasks: Sequence[EditTask]) -> MethodRun:
    """``diffedit_paste``: ``base``'s edits with the input's own pixels put back outside the mask
    (``diffedit.editor.paste_background``, exactly what ``EditParams(paste_background=True)`` does
    after decoding). Its time is ``base``'s plus the pasting."""
    start = time.perf_counter()
    outputs = []
    for out, res, t in zip(base.outputs, results, tasks, strict=True):
        pasted = paste_background(out.image, t.image.convert("RGB"), torch.from_numpy(res.mask_binary_latent))
        outputs.append(MethodOutput(pasted, out.mask_binary, out.mask_soft, out.unet_evals))
    seconds = base.seconds + time.perf_counter() - start
    return MethodRun("diffedit_paste", base.ratio, base.steps, outputs, seconds, predicts_mask=True)


@torch.inference_mode()
def run_diffusers(
    pipe: Any,
    tasks: Sequence[EditTask],
    ratio: float,
    steps: int,
    max_batch: int,
) -> MethodRun:
    """diffusers' deprecated pipeline at its defaults (except ``num_inference_steps=steps`` in all
    three calls, and ``inpaint_strength=ratio`` in ``invert`` and ``__call__``).

    ``generate_mask`` runs one task at a time: its threshold is a clamp at 3x the *batch* mean, so
    batching would couple tasks' masks. ``invert`` and ``__call__`` run in batches of ``max_batch``
    tasks (CFG doubles that in the UNet); each task has its own generator seeded with its seed.
    """
    counter = UNetSampleCounter(pipe.unet)
    start = time.perf_counter()
    try:
        masks = []
        for t in tasks:
            m = pipe.generate_mask(
                image=t.image,
                source_prompt=t.caption,
                target_prompt=t.query,
                num_inference_steps=steps,
                generator=torch.Generator().manual_seed(int(t.seed)),
                output_type="np",
            )  # (1, h, w) float 0/1
            masks.append(np.asarray(m[0]) > 0.5)
        images: list[Image.Image] = []
        for lo in range(0, len(tasks), max_batch):
            chunk = list(tasks[lo : lo + max_batch])
            gens = [torch.Generator().manual_seed(int(t.seed)) for t in chunk]
            inverted = pipe.invert(
                prompt=[t.caption for t in chunk],
                image=[t.image for t in chunk],
                num_inference_steps=steps,
                inpaint_strength=ratio,
                generator=gens,
            ).latents
            out = pipe(
                prompt=[t.query for t in chunk],
                mask_image=torch.from_numpy(np.stack(masks[lo : lo + max_batch]).astype(np.float32)),
                image_latents=inverted,
                inpaint_strength=ratio,
                num_inference_steps=steps,
                generator=gens,
                output_type="pil",
            ).images
            images.extend(out)
    finally:
        counter.close()
    seconds = time.perf_counter() - start
    per_edit = counter.samples // max(1, len(tasks))
    outputs = []
    for t, img, m in zip(tasks, images, masks, strict=True):
        size = (t.image.width, t.image.height)
        if img.size != size:
            img = img.resize(size, Image.Resampling.LANCZOS)
        outputs.append(MethodOutput(img.convert("RGB"), mask_to_image(m, size), None, per_edit))
    return MethodRun("diffusers", ratio, steps, outputs, seconds, predicts_mask=True)


def run_ledits_method(pipe: Any, tasks: Sequence[EditTask], ratio: float, steps: int) -> MethodRun:
    """LEDITS++ (``benchmarks.quality_ledits``) at ``ratio`` (skip = 1 - ratio) with its stated settings."""
    from benchmarks.quality_ledits import LEDITS_SETTINGS, run_ledits

    images, evals, seconds = run_ledits(pipe, tasks, ratio, steps)
    outputs = [MethodOutput(img, None, None, n) for img, n in zip(images, evals, strict=True)]
    return MethodRun("ledits", ratio, steps, outputs, seconds, notes=dict(LEDITS_SETTINGS))


@torch.inference_mode()
def run_vae_recon(bundle: ModelBundle, tasks: Sequence[EditTask], max_batch: int) -> MethodRun:
    """decode(encode(x)) of every input: the ceiling of fidelity in latent space."""
    from diffedit.images import pil_to_tensor, tensor_to_pil

    start = time.perf_counter()
    outputs = []
    for lo in range(0, len(tasks), max_batch):
        chunk = tasks[lo : lo + max_batch]
        x = torch.stack([pil_to_tensor(t.image.convert("RGB")) for t in chunk])  # (B, 3, H, W)
        y = bundle.vae_decode(bundle.vae_encode(x))
        outputs.extend(MethodOutput(tensor_to_pil(y[i])) for i in range(len(chunk)))
    return MethodRun("vae_recon", float("nan"), 0, outputs, time.perf_counter() - start)


def run_target_render(tasks: Sequence[EditTask]) -> MethodRun:
    """The ground-truth edited scenes: what a perfect edit looks like (checks the judge)."""
    outputs = [MethodOutput(t.target_image.convert("RGB")) for t in tasks]
    return MethodRun("target_render", float("nan"), 0, outputs, 0.0)


# =========================================================================== scoring


def score_run(run: MethodRun, tasks: Sequence[EditTask], slice_name: str = "all") -> list[dict[str, Any]]:
    """One record per task (``TASK_COLUMNS``)."""
    records = []
    for t, out in zip(tasks, run.outputs, strict=True):
        colour, shape, ok = judge_edit(out.image, t.region, t.kind, t.target_colour, t.target_shape)
        kept, clean = judge_clean(out.image, t, ok)
        iou = (
            mask_iou(out.mask_binary, t.region)
            if run.predicts_mask and out.mask_binary is not None
            else float("nan")
        )
        records.append(
            {
                "slice": slice_name,
                "method": run.method,
                "ratio": run.ratio,
                "task_id": t.id,
                "kind": t.kind,
                "n_objects": t.n_objects,
                "seed": t.seed,
                "caption": t.caption,
                "query": t.query,
                "target_colour": t.target_colour,
                "target_shape": t.target_shape,
                "judged_colour": colour,
                "judged_shape": shape,
                "success": float(ok),
                "others_kept": kept,
                "clean_success": float(clean),
                "mask_iou": iou,
                "bg_psnr": background_psnr(out.image, t.image, t.region),
                "bg_mae": background_mae(out.image, t.image, t.region),
                "unet_evals": out.unet_evals,
            }
        )
    return records


def summarise(run: MethodRun, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One ``results.csv`` row from a run's task records."""

    def of(kind: str | None, key: str) -> float:
        return _mean([r[key] for r in records if kind is None or r["kind"] == kind])

    def by_count(k: int, key: str) -> float:
        return _mean([r[key] for r in records if r.get("n_objects") == k])

    n = len(records)
    reference = run.method in REFERENCES
    return {
        "slice": records[0].get("slice", "all") if records else "all",
        "method": run.method,
        "ratio": run.ratio,
        "steps": run.steps,
        "n": n,
        "n_recolor": sum(r["kind"] == "recolor" for r in records),
        "n_reshape": sum(r["kind"] == "reshape" for r in records),
        "mask_iou": of(None, "mask_iou"),
        "mask_iou_recolor": of("recolor", "mask_iou"),
        "mask_iou_reshape": of("reshape", "mask_iou"),
        "bg_psnr": of(None, "bg_psnr"),
        "bg_psnr_recolor": of("recolor", "bg_psnr"),
        "bg_psnr_reshape": of("reshape", "bg_psnr"),
        "bg_mae": of(None, "bg_mae"),
        "success": of(None, "success"),
        "success_recolor": of("recolor", "success"),
        "success_reshape": of("reshape", "success"),
        "clean_success": of(None, "clean_success"),
        "clean_success_recolor": of("recolor", "clean_success"),
        "clean_success_reshape": of("reshape", "clean_success"),
        **{f"n_{k}obj": sum(r.get("n_objects") == k for r in records) for k in (1, 2, 3)},
        **{f"success_{k}obj": by_count(k, "success") for k in (1, 2, 3)},
        **{f"clean_success_{k}obj": by_count(k, "clean_success") for k in (1, 2, 3)},
        "edits_per_s": float("nan") if reference or run.seconds <= 0 else n / run.seconds,
        "unet_evals_per_edit": of(None, "unet_evals"),
        "seconds": run.seconds,
    }


# =========================================================================== outputs


def _fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """``rows`` as CSV with ``columns``; NaN written as an empty cell."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: _fmt(row.get(k, ""), 4) for k in columns})


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A fixed-width text table of the summary rows."""
    cols = [
        ("slice", "slice", 0),
        ("method", "method", 0),
        ("ratio", "r", 1),
        ("steps", "steps", 0),
        ("n", "n", 0),
        ("mask_iou_recolor", "IoU rec", 3),
        ("mask_iou_reshape", "IoU resh", 3),
        ("bg_psnr", "bgPSNR", 2),
        ("bg_mae", "bgMAE", 2),
        ("success", "success", 3),
        ("success_recolor", "succ rec", 3),
        ("success_reshape", "succ resh", 3),
        ("clean_success", "clean", 3),
        ("success_1obj", "succ 1obj", 3),
        ("success_2obj", "succ 2obj", 3),
        ("success_3obj", "succ 3obj", 3),
        ("edits_per_s", "edits/s", 2),
        ("unet_evals_per_edit", "UNet/edit", 0),
    ]
    cells = [[h for _, h, _ in cols]]
    for row in rows:
        cells.append(
            [
                _fmt(row.get(k, ""), d) if isinstance(row.get(k), float) else str(row.get(k, ""))
                for k, _, d in cols
            ]
        )
    widths = [max(len(r[i]) for r in cells) for i in range(len(cols))]
    lines = []
    for j, r in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_tradeoff(rows: Sequence[dict[str, Any]], path: Path, steps: int | None = None) -> None:
    """Edit success (left) and clean success (right) against background PSNR, one line per method
    across r (the paper's trade-off plot) over the rows run at ``steps`` DDIM steps (None: the most
    common count); rows at other step counts as separate stars; the VAE reconstruction's background
    PSNR as a vertical line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edits = [r for r in rows if r["method"] in METHODS]
    if steps is None and edits:
        counts = [r["steps"] for r in edits]
        steps = max(set(counts), key=counts.count)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), dpi=110, sharey=True)
    for ax, key, name in zip(
        axes, ("success", "clean_success"), ("edit success", "clean success (others kept too)"), strict=True
    ):
        for method in METHODS:
            pts = sorted(
                (r for r in edits if r["method"] == method and r["steps"] == steps), key=lambda r: r["ratio"]
            )
            if not pts:
                continue
            xs, ys = [p["bg_psnr"] for p in pts], [p[key] for p in pts]
            (line,) = ax.plot(xs, ys, marker="o", label=f"{method} ({steps} steps)")
            for extra in (r for r in edits if r["method"] == method and r["steps"] != steps):
                ax.plot(
                    extra["bg_psnr"],
                    extra[key],
                    marker="*",
                    markersize=12,
                    color=line.get_color(),
                    linestyle="none",
                    label=f"{method}, {extra['steps']} steps, r={extra['ratio']:g}",
                )
            for p in pts:
                ax.annotate(
                    f"r={p['ratio']:g}",
                    (p["bg_psnr"], p[key]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        for r in rows:
            if r["method"] == "vae_recon":
                ax.axvline(
                    r["bg_psnr"],
                    color="grey",
                    linestyle="--",
                    label=f"VAE reconstruction ({r['bg_psnr']:.1f} dB)",
                )
        ax.set_xlabel("background PSNR outside the edit region (dB, higher = better preserved)")
        ax.set_ylabel(f"{name} (classifier)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(name)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle("DiffEdit trade-off on held-out shapes edits")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def contact_sheet(
    tasks: Sequence[EditTask],
    run: MethodRun,
    path: Path,
    records: Sequence[dict[str, Any]] | None = None,
    count: int = 12,
) -> None:
    """A grid of ``count`` tasks: input | soft mask | binary mask (ground-truth region outlined) | edit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(count, len(tasks))
    fig, axes = plt.subplots(n, 4, figsize=(8, 2.1 * n), dpi=100, squeeze=False)
    for i in range(n):
        t, out = tasks[i], run.outputs[i]
        blank = np.zeros((t.image.height, t.image.width), dtype=np.float32)
        soft = out.mask_soft if out.mask_soft is not None else blank
        binary = out.mask_binary if out.mask_binary is not None else blank.astype(bool)
        panels = [
            (np.asarray(t.image.convert("RGB")), None, "input"),
            (soft, "magma", "soft mask"),
            (binary.astype(np.float32), "gray", "binary mask"),
            (np.asarray(out.image), None, "edit"),
        ]
        for j, (img, cmap, title) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(img, cmap=cmap, vmin=0, vmax=1 if cmap else None, interpolation="nearest")
            if j == 2:
                ax.contour(t.region.astype(float), levels=[0.5], colors="lime", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=9)
        label = f"{t.kind}: {t.source_colour} {t.source_shape} -> {t.target_colour} {t.target_shape}"
        if records is not None:
            rec = records[i]
            label += f"\nIoU {rec['mask_iou']:.2f}  bg {rec['bg_psnr']:.1f} dB  {'OK' if rec['success'] else 'fail'}"
        axes[i, 0].set_ylabel(label, fontsize=6, rotation=0, ha="right", va="center")
    fig.suptitle(
        f"{run.method} at r={run.ratio:g}, {run.steps} steps (green: ground-truth region)", fontsize=9
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# =========================================================================== driver


def run_benchmark(
    bundle: ModelBundle,
    tasks: Sequence[EditTask],
    ratios: Sequence[float],
    methods: Sequence[str] = METHODS,
    steps: int = 25,
    max_batch: int = 64,
    out_dir: Path | None = None,
    contact_ratio: float = 0.7,
    default_steps: int | None = 50,
    score_workers: int = 1,
    log: Callable[[str], None] = print,
    base: EditParams | None = None,
    slice_name: str = "all",
    references: bool = True,
    peer_tasks: int | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run every method at every ratio on ``tasks`` with ``steps`` DDIM steps; return (summary rows,
    task records), labelled ``slice_name``.

    ``ONE_RATIO_METHODS`` run at ``contact_ratio`` only. ``base``: our parameters (mask options
    etc.; the defaults when None) for every variant of ours. With ``default_steps`` (and
    ``diffedit`` among ``methods``), ours also runs once at that many steps — its default, 50 — at
    r = ``contact_ratio``: the contact sheet's row. Skipped when it equals ``steps`` (the sweep holds
    it already). ``references``: also the ``vae_recon`` and ``target_render`` rows. ``peer_tasks``:
    LEDITS++ (one task per call, the slowest method) runs on the first that many tasks only.
    ``score_workers`` > 0 scores finished runs in that many worker processes while the model runs
    the next method (the shapes classifier costs about 0.1 s a task); 0 scores in this process.
    With ``out_dir``, writes results.csv, tasks.csv, tradeoff.png and (when ``diffedit`` ran)
    contact_sheet.png there.
    """
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {list(METHODS)}")
    tasks = list(tasks)
    editor = DiffEditor(bundle, max_batch=max_batch)
    pipe = deprecated_diffedit_pipeline(bundle) if "diffusers" in methods else None
    ledits = None
    if "ledits" in methods:
        from benchmarks.quality_ledits import ledits_pipeline

        ledits = ledits_pipeline(bundle)
    runs: list[MethodRun] = []
    scored: list[Any] = []  # per run: a Future of its records, or the records
    pool = None
    if score_workers > 0:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(score_workers, mp_context=multiprocessing.get_context("spawn"))
    sheet: MethodRun | None = None

    def add(run: MethodRun, on: Sequence[EditTask] | None = None) -> None:
        on = tasks if on is None else on
        log(
            f"  ran {slice_name}: {run.method:<18} r={_fmt(run.ratio, 2):<4} {run.steps:>2} steps "
            f"in {run.seconds:7.1f} s"
        )
        runs.append(run)
        light = MethodRun(  # the soft masks are not scored: leave them out of the pickle
            run.method,
            run.ratio,
            run.steps,
            [MethodOutput(o.image, o.mask_binary, None, o.unet_evals) for o in run.outputs],
            run.seconds,
            run.predicts_mask,
        )
        scored.append(
            pool.submit(score_run, light, on, slice_name) if pool else score_run(light, on, slice_name)
        )

    log(
        f"{slice_name}: {len(tasks)} tasks, ratios {list(ratios)}, methods {list(methods)}, {steps} steps, "
        f"max_batch {max_batch}"
    )
    if references:
        add(run_vae_recon(bundle, tasks, max_batch))
        add(run_target_render(tasks))
    for ratio in ratios:
        for method in methods:
            if method == "diffedit_paste":
                continue  # derived from diffedit's run
            if method in ONE_RATIO_METHODS and ratio != contact_ratio:
                continue
            if method == "diffusers":
                add(run_diffusers(pipe, tasks, ratio, steps, max_batch))
                continue
            if method == "ledits":
                sub = tasks[:peer_tasks] if peer_tasks else tasks
                add(run_ledits_method(ledits, sub, ratio, steps), sub)
                continue
            run, results = run_ours(editor, tasks, ratio, steps, method, base)
            add(run)
            if method == "diffedit":
                if "diffedit_paste" in methods:
                    add(paste_run(run, results, tasks))
                if sheet is None or abs(ratio - contact_ratio) < abs(sheet.ratio - contact_ratio):
                    sheet = run
    if default_steps and default_steps != steps and "diffedit" in methods:
        log(f"ours at its default {default_steps} steps, r={contact_ratio:g}:")
        run, results = run_ours(editor, tasks, contact_ratio, default_steps, "diffedit", base)
        add(run)
        sheet = run
        if "diffedit_paste" in methods:
            add(paste_run(run, results, tasks))
    rows: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    sheet_records: list[dict[str, Any]] | None = None
    try:
        for run, pending in zip(runs, scored, strict=True):
            recs = pending.result() if pool else pending
            row = summarise(run, recs)
            row["slice"] = slice_name
            rows.append(row)
            records.extend(recs)
            if run is sheet:
                sheet_records = recs
            log(
                f"  {slice_name}: {run.method:<18} r={_fmt(run.ratio, 2):<4} {run.steps:>2} steps  "
                f"success {row['success']:.3f}  clean {row['clean_success']:.3f}  "
                f"bg PSNR {row['bg_psnr']:.2f} dB  "
                f"IoU rec/resh {_fmt(row['mask_iou_recolor'])}/{_fmt(row['mask_iou_reshape'])}"
            )
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    if out_dir is not None:
        write_outputs(Path(out_dir), rows, records, steps)
        if sheet is not None:
            contact_sheet(tasks, sheet, Path(out_dir) / "contact_sheet.png", sheet_records)
    return rows, records


def write_outputs(
    out_dir: Path, rows: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]], steps: int
) -> None:
    """results.csv, tasks.csv and tradeoff.png (of the ``all`` slice) in ``out_dir``."""
    write_csv(out_dir / "results.csv", rows, SUMMARY_COLUMNS)
    write_csv(out_dir / "tasks.csv", records, TASK_COLUMNS)
    plot_tradeoff([r for r in rows if r.get("slice", "all") == "all"], out_dir / "tradeoff.png", steps)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.quality",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="models/shapes-v3", help="model directory or URL (load_bundle)")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="use a tiny random model instead (benchmarks.quality_ledits.tiny_ledits_bundle; smoke test, edits are noise)",
    )
    p.add_argument("--tasks", type=int, default=200, help="number of held-out edit tasks")
    p.add_argument("--seed", type=int, default=0, help="task stream (scene seeds 1e9 + seed * 1_000_003 + k)")
    p.add_argument("--kinds", nargs="+", default=["recolor", "reshape"], choices=["recolor", "reshape"])
    p.add_argument("--size", type=int, default=64, help="scene size in pixels")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.7, 0.9], help="encoding ratios r")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--steps", type=int, default=25, help="DDIM steps of the sweep, the same for every method")
    p.add_argument(
        "--default-steps",
        type=int,
        default=50,
        help="also run ours at this many steps (its default) at --contact-ratio; 0 = skip",
    )
    p.add_argument(
        "--max-batch", type=int, default=64, help="samples per UNet call (ours); tasks per batch (diffusers)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared 2-core machine 2 threads are 10-50x slower); 0 = torch's default",
    )
    p.add_argument(
        "--score-workers",
        type=int,
        default=1,
        help="processes scoring finished runs while the model runs the next; 0 = score inline",
    )
    p.add_argument("--contact-ratio", type=float, default=0.7, help="r of the contact sheet (ours)")
    p.add_argument(
        "--peer-tasks",
        type=int,
        default=0,
        help="LEDITS++ on the first this many tasks only (one task per call: the slowest method); 0 = all",
    )
    p.add_argument(
        "--three-object-tasks",
        type=int,
        default=40,
        help="size of the forced 3-object recolour slice (run at --contact-ratio); 0 = skip",
    )
    p.add_argument(
        "--three-object-seed", type=int, default=1000, help="task stream of the 3-object slice (held out)"
    )
    p.add_argument(
        "--three-object-methods",
        nargs="+",
        default=list(THREE_OBJECT_METHODS),
        choices=list(METHODS),
        help="methods of the 3-object slice",
    )
    p.add_argument(
        "--override",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="EditParams fields for every variant of ours (YAML values), e.g. mask_threshold=0.3",
    )
    p.add_argument("--out", default="out/quality", help="output directory")
    return p.parse_args(argv)


def parse_overrides(items: Sequence[str]) -> EditParams:
    """``KEY=VALUE`` strings (values read as YAML scalars) -> EditParams over the defaults."""
    import yaml

    values: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--override {item!r}: expected KEY=VALUE")
        values[key.strip()] = yaml.safe_load(value)
    return EditParams.from_dict(values, source="--override")


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.quality_ledits import LEDITS_SETTINGS

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    wall0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        from benchmarks.quality_ledits import tiny_ledits_bundle

        bundle, model = tiny_ledits_bundle(seed=0), "tiny-ledits:0"
    else:
        from diffedit.loading import load_bundle

        bundle, model = load_bundle(args.model), args.model
    base = parse_overrides(args.override)
    tasks = make_edit_tasks(args.seed, args.tasks, size=args.size, kinds=tuple(args.kinds))
    common = dict(
        steps=args.steps,
        max_batch=args.max_batch,
        contact_ratio=args.contact_ratio,
        score_workers=args.score_workers,
        base=base,
    )
    rows, records = run_benchmark(
        bundle,
        tasks,
        args.ratios,
        methods=args.methods,
        out_dir=out,
        default_steps=args.default_steps,
        peer_tasks=args.peer_tasks or None,
        **common,
    )
    three: list[EditTask] = []
    if args.three_object_tasks > 0:
        three = make_edit_tasks(
            args.three_object_seed, args.three_object_tasks, size=args.size, kinds=("recolor",), n_objects=3
        )
        rows3, records3 = run_benchmark(
            bundle,
            three,
            [args.contact_ratio],
            methods=args.three_object_methods,
            default_steps=None,
            slice_name="three_object_recolor",
            references=False,
            **common,
        )
        rows, records = rows + rows3, records + records3
        write_outputs(out, rows, records, args.steps)
    wall = time.perf_counter() - wall0
    ceiling = latent_grid_ceiling(tasks, bundle.vae_scale_factor)
    meta = {
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.quality", *sys.argv[1:]]),
        "model": model,
        "weights_sha256": getattr(bundle, "weights_hash", None),
        "tasks": len(tasks),
        "task_seed": args.seed,
        "scene_seeds": [int(tasks[0].seed), int(tasks[-1].seed)] if tasks else [],
        "three_object_tasks": len(three),
        "peer_tasks": args.peer_tasks or len(tasks),
        "ledits_settings": LEDITS_SETTINGS,
        "three_object_scene_seeds": [int(three[0].seed), int(three[-1].seed)] if three else [],
        "params_of_ours": base.to_dict(),
        "paper_mask": PAPER_MASK,
        "ratios": args.ratios,
        "methods": args.methods,
        "steps": args.steps,
        "default_steps": args.default_steps,
        "max_batch": args.max_batch,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.platform(),
        "mask_iou_latent_grid_ceiling": ceiling,
        "wall_seconds": wall,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print()
    print(format_table(rows))
    f = bundle.vae_scale_factor
    print(
        f"\nmask IoU ceiling of a perfect {f}x{f}-pixel latent-grid mask (majority rule): "
        + ", ".join(f"{k} {v:.3f}" for k, v in ceiling.items())
    )
    print(
        f"\nwall {wall:.0f} s; wrote {out}/results.csv, tasks.csv, tradeoff.png, contact_sheet.png, meta.json"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

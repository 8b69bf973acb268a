"""The methods of the quality benchmark, each a runner: (model, tasks, r, steps) -> ``MethodRun``.

Ours (``run_ours``: its variants), ours with the background pasted (``paste_run``), diffusers'
deprecated DiffEdit pipeline (``run_diffusers``), LEDITS++ (``run_ledits_method``, ``ledits``), and the
two reference rows that do not depend on r: the VAE's reconstruction and the ground truth rendered.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.quality.ledits import LEDITS_SETTINGS, run_ledits
from benchmarks.quality.metrics import mask_to_image
from diffedit.bundle import ModelBundle
from diffedit.editor import DiffEditor, EditRequest, EditResult, paste_background
from diffedit.params import PAPER_MASK, EditParams
from diffedit.reference import UNetSampleCounter
from diffedit.shapes.scenes import EditTask

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
    """LEDITS++ (``benchmarks.quality.ledits``) at ``ratio`` (skip = 1 - ratio) with its stated settings."""
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


class Methods:
    """Every method of the benchmark over one model: ``run(method, tasks, r, steps)``. The editor and
    the peers' pipelines are built on first use; ``diffedit_paste`` reuses the last ``diffedit`` run
    of the same tasks, r and steps (pasting costs no UNet evaluation)."""

    def __init__(self, bundle: ModelBundle, max_batch: int = 64, base: EditParams | None = None):
        self.bundle, self.max_batch, self.base = bundle, max_batch, base
        self._editor: DiffEditor | None = None
        self._diffusers: Any = None
        self._ledits: Any = None
        self._last_ours: tuple[tuple[Any, ...], MethodRun, list[EditResult]] | None = None

    @property
    def editor(self) -> DiffEditor:
        if self._editor is None:
            self._editor = DiffEditor(self.bundle, max_batch=self.max_batch)
        return self._editor

    def run(self, method: str, tasks: Sequence[EditTask], ratio: float, steps: int) -> MethodRun:
        """``method`` (one of ``METHODS``) on ``tasks`` at encoding ratio ``ratio`` with ``steps`` steps."""
        tasks = list(tasks)
        if method == "diffusers":
            if self._diffusers is None:
                from diffedit.reference import deprecated_diffedit_pipeline

                self._diffusers = deprecated_diffedit_pipeline(self.bundle)
            return run_diffusers(self._diffusers, tasks, ratio, steps, self.max_batch)
        if method == "ledits":
            if self._ledits is None:
                from benchmarks.quality.ledits import ledits_pipeline

                self._ledits = ledits_pipeline(self.bundle)
            return run_ledits_method(self._ledits, tasks, ratio, steps)
        if method == "diffedit_paste":
            key = ("diffedit", ratio, steps, tuple(t.id for t in tasks))
            if self._last_ours is None or self._last_ours[0] != key:
                self.run("diffedit", tasks, ratio, steps)
            assert self._last_ours is not None
            return paste_run(self._last_ours[1], self._last_ours[2], tasks)
        if method not in OURS:
            raise ValueError(f"unknown method {method!r}; known: {list(METHODS)}")
        run, results = run_ours(self.editor, tasks, ratio, steps, method, self.base)
        if method == "diffedit":
            self._last_ours = (("diffedit", ratio, steps, tuple(t.id for t in tasks)), run, results)
        return run

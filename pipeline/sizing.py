"""Batch sizes from the model's family and resolution: the per-family plan (issue 19, item 1 and 5).

A job that leaves ``compute.batch_size`` (rows per call of a model actor), ``compute.max_batch`` (UNet
samples per forward pass), ``compute.vae_batch`` (images per VAE call) or ``compute.group_window``
(rows per actor call, grouped by model resolution in it, ``pipeline.grouping``) unset gets them from
``PLAN``, keyed by the model's family and native resolution; a value the job sets always wins.

What the plan is sized for (an assumption, not a measurement: no GPU was lent to this work, see
README "Sizing a GPU run" and ``make bench-gpu``): one 80 GB GPU per actor in float16/bfloat16.

* ``max_batch``: the UNet samples one forward pass holds. SD 1.5 at 512² (64² latents) takes 64;
  SD 2.1 at 768² (96², 2.25x the activations per sample) 32; SDXL at 1024² (128², ~3x SD 1.5's
  activations per sample with a UNet 3x as large) 16.
* ``batch_size = max_batch / 2``: the decode step evaluates 2 samples per row (the query and the
  negative prompt, classifier-free guidance), so a bucket of ``batch_size`` rows fills one call; the
  mask step (2 x 10 draws per row) then fills ``max_batch`` calls ten times over.
* ``vae_batch``: the VAE works at full resolution (512² x 128 channels per image in its last up
  block), so it is chunked apart from the UNet: 16 images at 512², 8 at 768², 4 at 1024² (SDXL's
  VAE runs in float32 under float16, its ``force_upcast``).
* ``group_window = GROUP_BATCHES x batch_size`` rows per actor call, edited in chunks of one model
  resolution (``pipeline.grouping``): enough batches per window that the part-full call each
  resolution leaves per window costs little: on a COCO-like aspect mix, decode calls are 92-94 % full
  at 48 batches (90 % at 32; ``python -m benchmarks.batching``). Its memory: a window of decoded
  inputs (SD 1.5: 1,536 rows of 640x480 RGB, ~1.4 GB) in the actor, twice with Ray Data's prefetch.

On a CPU the plan is the previous defaults (8 rows, 16 samples; no regrouping): CPU actors edit small
batches and a window would only delay the first commit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

#: Batches of ``batch_size`` rows per regrouping window (``pipeline.grouping``) when the job sets none.
GROUP_BATCHES = 48


@dataclass(frozen=True)
class Geometry:
    """What the model's configs say about the images it works on (``diffedit.ModelBundle``'s
    ``family``, ``native_size``, ``pixel_multiple``), read without loading weights."""

    family: str  # "sd" | "sdxl" | "sd3" | "flux"
    native_size: int  # the image side the UNet was trained at: 512 for SD 1.5
    pixel_multiple: int  # image sides are multiples of this: 64 for SD


@dataclass(frozen=True)
class Shape:
    """One plan entry: rows per editor call, UNet samples per call, images per VAE call."""

    batch_size: int
    max_batch: int
    vae_batch: int


#: (family, native resolution) -> the entry (module docstring); a resolution not listed gets the nearest
#: entry of its family scaled by area.
PLAN: dict[tuple[str, int], Shape | None] = {
    ("sd", 512): Shape(batch_size=32, max_batch=64, vae_batch=16),
    ("sd", 768): Shape(batch_size=16, max_batch=32, vae_batch=8),
    ("sdxl", 1024): Shape(batch_size=8, max_batch=16, vae_batch=4),
    # SD3.5-medium (2.5 B transformer; 4,096 image + 333 text tokens at 1024², real CFG): as SDXL.
    ("sd3", 1024): Shape(batch_size=8, max_batch=16, vae_batch=4),
    # FLUX.1-dev (12 B, ~24 GB of bf16 weights; 4,096 + 512 tokens; distilled guidance: one sample per row
    # and decode step, so batch_size = max_batch).
    ("flux", 1024): Shape(batch_size=8, max_batch=8, vae_batch=4),
}
#: The CPU plan: the defaults the job had before the plan (ComputeConfig's old batch_size, max_batch).
CPU_SHAPE = Shape(batch_size=8, max_batch=16, vae_batch=16)
#: Ceilings of a scaled entry (a small model on a large GPU).
MAX_ROWS, MAX_SAMPLES = 64, 128


@dataclass(frozen=True)
class Batching:
    """The effective batch sizes of a run, and where each came from (for the log and ``validate``)."""

    batch_size: int
    max_batch: int
    vae_batch: int
    group_window: int  # rows per actor call, grouped by model resolution; 0: batch_size, not grouped
    origin: str  # e.g. "plan sd@512px cuda; compute.max_batch from the job"

    def describe(self) -> str:
        window = f"windows of {self.group_window} rows per actor call, grouped by model resolution"
        return (
            f"batching: {self.batch_size} rows per editor call, max_batch {self.max_batch}, vae_batch "
            f"{self.vae_batch}, {window if self.group_window else 'rows not grouped'} ({self.origin})"
        )


def plan_shape(geometry: Geometry | None, device: str) -> tuple[Shape, str]:
    """The plan's entry for a model on ``device``, and its name. An unknown resolution or family takes
    the nearest entry of its family (else SD at 512²) scaled by pixel area."""
    if device != "cuda":
        return CPU_SHAPE, f"plan {device}"
    if geometry is None:
        return PLAN[("sd", 512)] or CPU_SHAPE, "plan sd@512px cuda (model geometry unknown)"
    name = f"plan {geometry.family}@{geometry.native_size}px cuda"
    exact = PLAN.get((geometry.family, geometry.native_size))
    if exact is not None:
        return exact, name
    known = [(k, v) for k, v in PLAN.items() if v is not None]
    same = [(k, v) for k, v in known if k[0] == geometry.family] or [
        (k, v) for k, v in known if k == ("sd", 512)
    ]
    (_, size), ref = min(same, key=lambda kv: abs(kv[0][1] - geometry.native_size))
    area = (size / geometry.native_size) ** 2  # > 1: a smaller image fits more per call

    def scaled(v: int, cap: int) -> int:
        return max(1, min(cap, int(v * area)))

    shape = Shape(
        batch_size=scaled(ref.batch_size, MAX_ROWS),
        max_batch=scaled(ref.max_batch, MAX_SAMPLES),
        vae_batch=scaled(ref.vae_batch, MAX_SAMPLES),
    )
    return shape, f"{name}, scaled from {size}px by area"


def batching(compute: Any, geometry: Geometry | None) -> Batching:
    """The effective batch sizes: each of ``compute``'s ``batch_size``, ``max_batch``, ``vae_batch``,
    ``group_window`` that the job set, else the plan's (``plan_shape``). ``compute`` is a
    ``pipeline.config.ComputeConfig``."""
    shape, origin = plan_shape(geometry, compute.device)
    keys = ("batch_size", "max_batch", "vae_batch", "group_window")
    explicit = [k for k in keys if getattr(compute, k) is not None]
    batch_size = compute.batch_size if compute.batch_size is not None else shape.batch_size
    max_batch = compute.max_batch if compute.max_batch is not None else shape.max_batch
    if compute.vae_batch is not None:
        vae_batch = compute.vae_batch
    elif compute.device == "cuda":
        vae_batch = min(shape.vae_batch, max_batch)
    else:
        vae_batch = max_batch  # the editor's own default: as many images as UNet samples
    if compute.group_window is not None:
        window = compute.group_window
    else:
        window = GROUP_BATCHES * batch_size if compute.device == "cuda" else 0
    if explicit:
        origin += "; " + ", ".join(f"compute.{k}" for k in explicit) + " from the job"
    return Batching(batch_size, max_batch, vae_batch, window, origin)


def geometry_from_configs(family: str, read_json: Callable[[str], Mapping[str, Any]]) -> Geometry | None:
    """A model directory's ``Geometry`` from ``unet/config.json`` (``transformer/config.json`` for the flow
    families) and ``vae/config.json``: the same arithmetic as ``ModelBundle`` / ``FlowBundle``'s
    ``native_size`` and ``pixel_multiple``; None when they cannot be read."""
    try:
        vae = read_json("vae/config.json")
        vae_scale = 2 ** (len(vae["block_out_channels"]) - 1)
        if family in ("sd3", "flux"):
            from diffedit.loading.layout import FLUX_SAMPLE_SIZE

            transformer = read_json("transformer/config.json")
            if family == "sd3":
                return Geometry(
                    family,
                    int(transformer["sample_size"]) * vae_scale,
                    vae_scale * int(transformer["patch_size"]),
                )
            sample = read_json("model_index.json").get("default_sample_size") or FLUX_SAMPLE_SIZE
            return Geometry(family, int(sample) * vae_scale, vae_scale * 2)
        unet = read_json("unet/config.json")
        sample = unet["sample_size"]
        sample = sample[0] if isinstance(sample, (list, tuple)) else sample
        latent_multiple = 2 ** (len(unet["block_out_channels"]) - 1)
        return Geometry(family, int(sample) * vae_scale, vae_scale * latent_multiple)
    except (OSError, KeyError, TypeError, ValueError):
        return None

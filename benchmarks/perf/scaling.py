"""Sections ``batch`` and ``size``: ours at several batch sizes, and at several image sizes on tiny
random models."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from benchmarks.perf.methods import OursRunner
from benchmarks.perf.rows import BenchRow, chunks, make_rows
from benchmarks.perf.timing import ModelTimer
from diffedit.bundle import ModelBundle
from diffedit.params import EditParams


def run_ours_point(
    bundle: ModelBundle,
    rows: Sequence[BenchRow],
    params: EditParams,
    *,
    batch: int,
    max_batch: int,
    warmup: bool = True,
) -> dict[str, Any]:
    """Ours alone over ``rows`` in batches of ``batch``: one scaling point."""
    with ModelTimer(bundle) as timer:
        if warmup:
            OursRunner(bundle, params, max_batch, timer).run_batch(rows[:batch])
        runner = OursRunner(bundle, params, max_batch, timer)
        for chunk in chunks(rows, batch):
            runner.run_batch(chunk)
    s = runner.stats.summary()
    keep = (
        "rows",
        "edits_per_s",
        "edits_per_s_excl_io",
        "seconds_per_edit",
        "seconds_per_edit_by_stage",
        "unet_evals_per_edit",
        "unet_calls",
        "unet_samples_per_call",
        "unet_ms_per_sample",
        "vae_encode_seconds",
        "vae_decode_seconds",
        "model_bound_fraction",
        "model_bound_fraction_incl_text",
        "non_model_seconds_per_edit",
        "non_model_seconds_by_stage",
    )
    return {"batch": batch, **{k: s[k] for k in keep}}


def run_batch_scaling(
    bundle: ModelBundle,
    rows: Sequence[BenchRow],
    params: EditParams,
    *,
    batch_sizes: Sequence[int],
    max_batch: int,
    warmup: bool = True,
) -> dict[str, Any]:
    """Time per edit of ours as the batch (rows per ``edit`` call) grows."""
    points = []
    for b in batch_sizes:
        points.append(run_ours_point(bundle, rows, params, batch=b, max_batch=max_batch, warmup=warmup))
        points[-1]["load_average"] = list(os.getloadavg())
    return {
        "rows": len(rows),
        "num_inference_steps": params.num_inference_steps,
        "max_batch": max_batch,
        "points": points,
    }


def size_bundle(size: int, vae_stride: int = 8, seed: int = 0) -> ModelBundle:
    """A tiny random SD-layout model whose native size is ``size`` pixels.

    The UNet and text encoder are ``tiny_components(sample_size=size // vae_stride)``'s. Stride 8: a
    tiny four-block AutoencoderKL (channels 32, 32, 64, 64; one layer per block), Stable Diffusion's
    VAE stride, replaces the two-block one; stride 2: ``tiny_components``' own VAE.
    """
    from diffedit.tiny import tiny_components

    if vae_stride not in (2, 8):
        raise ValueError(f"vae_stride must be 2 or 8, got {vae_stride}")
    if size % (vae_stride * 2):
        raise ValueError(f"size {size} must be a multiple of {vae_stride * 2}")
    parts = tiny_components(seed, sample_size=size // vae_stride)
    if vae_stride == 8:
        from diffusers import AutoencoderKL

        torch.manual_seed(seed + 1)
        parts["vae"] = AutoencoderKL(
            block_out_channels=[32, 32, 64, 64],
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4,
            latent_channels=4,
            layers_per_block=1,
            sample_size=size,
        )
    return ModelBundle(**parts, source=f"tiny:{seed}:size{size}:vae{vae_stride}")


def run_size_scaling(
    sizes: Sequence[int],
    params: EditParams,
    *,
    rows: int,
    batch: int,
    max_batch: int,
    vae_stride: int = 8,
    seed: int = 0,
    warmup: bool = True,
) -> dict[str, Any]:
    """Time per edit of ours as the image grows, on tiny models of each native size."""
    points = []
    for size in sizes:
        bundle = size_bundle(size, vae_stride, seed)
        point = run_ours_point(
            bundle, make_rows(rows, seed, size), params, batch=batch, max_batch=max_batch, warmup=warmup
        )
        point.update(size=size, latent=size // vae_stride, load_average=list(os.getloadavg()))
        points.append(point)
    return {
        "rows": rows,
        "batch": batch,
        "max_batch": max_batch,
        "vae_stride": vae_stride,
        "num_inference_steps": params.num_inference_steps,
        "model": "tiny_components UNet (32, 64 channels) + "
        + ("4-block tiny VAE (stride 8)" if vae_stride == 8 else "tiny_components VAE (stride 2)"),
        "points": points,
    }

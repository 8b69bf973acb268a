"""``make bench-gpu``: UNet evaluations/s and edits/s per family on one CUDA GPU (issue 19, item 6).

``python -m benchmarks.gpu [--out out/gpu]`` measures, per model family at its native resolution with
random weights from the published configs (``benchmarks.perf.fullsize``: SD 1.5 at 512², SDXL at
1024²; ``benchmarks.fullsize``: SD3.5-medium and FLUX.1-dev at 1024²), per dtype (bfloat16, float16),
per mode (eager; compiled: ``optimize(compile_unet=True, channels_last=True, max_batch=...)``, on CUDA
static shapes and CUDA graphs for the UNet, regional compilation for the flow transformers) and per
batch size:

* ``unet_evals_per_s``: samples through the denoiser contract (``bundle.denoise``) per second, at one
  noise level and the caption's conditioning, after one warm-up call per shape (the compile, for the
  compiled mode);
* ``edits_per_s``: rows per second through ``DiffEditor.edit`` at the batch size (``BENCH_PARAMS``:
  10 DDIM steps, 2 mask draws: ``evals_per_edit`` UNet evaluations counted by the editor), and
  ``edits_per_s_at_140``: the same UNet throughput spent on the defaults' 140 evaluations per edit;
* ``peak_gib``: ``torch.cuda.max_memory_allocated`` over the cell (the edit included);
* ``tflops`` and ``utilisation``: the FLOPs of one evaluation, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` on one sample (matmuls, convolutions, attention; 2 per
  multiply-add), times ``unet_evals_per_s``, against the GPU's dense fp16/bf16 peak (``PEAK_TFLOPS`` by
  device name, or ``--peak-tflops``).

The whole run keeps to ``--budget-s`` (480 s): a cell that would start after the budget is written as
skipped. It writes ``gpu.md`` (the Markdown table) and ``gpu.json`` under ``--out``.

``--dry`` runs the same code on the tiny models of ``diffedit.tiny`` on the CPU in float32, eager, in
seconds (``tests/benchmarks/test_gpu_bench.py`` keeps it working); its figures say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

#: The defaults' UNet evaluations per edit (mask 2 x 10, encode 40, decode 2 x 40; README).
DEFAULT_EVALS = 140
#: Dense fp16/bf16 tensor-core peaks in TFLOP/s (NVIDIA data sheets), by a substring of the device name.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}
COLUMNS = (
    "family", "dtype", "mode", "batch", "unet_evals_per_s", "edits_per_s", "evals_per_edit",
    "edits_per_s_at_140", "peak_gib", "tflops", "utilisation", "status",
)  # fmt: skip


@dataclass
class Cell:
    """One measurement: a family, dtype, mode and batch size (columns: ``COLUMNS``)."""

    family: str
    dtype: str
    mode: str
    batch: int
    unet_evals_per_s: float | None = None
    edits_per_s: float | None = None
    evals_per_edit: float | None = None
    edits_per_s_at_140: float | None = None
    peak_gib: float | None = None
    tflops: float | None = None
    utilisation: float | None = None
    status: str = "ok"


def _fullsize(name: str) -> Callable[[torch.dtype, str], Any]:
    """A builder of a published architecture with random weights, as a ``ModelBundle`` on ``device``."""

    def build(dtype: torch.dtype, device: str) -> Any:
        from benchmarks.perf.fullsize import _kwargs, arch_config, build_modules, build_tokenizer
        from diffedit.bundle import ModelBundle

        parts = build_modules(name, device=device, dtype=dtype)
        tokenizer = build_tokenizer()
        extra = (
            {"tokenizer_2": tokenizer, "force_zeros_for_empty_prompt": True}
            if "text_encoder_2" in parts
            else {}
        )
        return ModelBundle(
            **parts,
            tokenizer=tokenizer,
            scheduler_config=_kwargs(arch_config(name)["scheduler"]),
            source=f"random:{name}",
            **extra,
        )

    return build


def _fullsize_flow(
    name: str, *, t5: bool = True, sample_size: int | None = None
) -> Callable[[torch.dtype, str], Any]:
    """SD3.5-medium or FLUX.1-dev from their published configs (``benchmarks.fullsize``) with random
    weights, built on ``device`` (initialised there: a 12 B model in seconds), as a ``FlowBundle``;
    SD3.5 without its optional T5 when ``t5`` is False; ``sample_size``: a reduced native latent side."""

    def build(dtype: torch.dtype, device: str) -> Any:
        from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel
        from transformers import (
            CLIPTextConfig,
            CLIPTextModel,
            CLIPTextModelWithProjection,
            T5Config,
            T5EncoderModel,
        )

        from benchmarks import fullsize as F
        from benchmarks.perf.fullsize import build_tokenizer
        from diffedit.flow_bundle import FlowBundle
        from diffedit.tiny import TINY_WORDS
        from diffedit.tiny_flow import FLUX_SCHEDULER_CONFIG, SD3_SCHEDULER_CONFIG, build_t5_tokenizer

        with torch.device(device):
            t5_model = T5EncoderModel(T5Config(**F.T5_XXL)).to(dtype) if t5 or name != "sd35-medium" else None
            vae = AutoencoderKL(**{**F.VAE16, "shift_factor": 0.0609, "scaling_factor": 1.5305}).to(dtype)
            if name == "sd35-medium":
                parts = {
                    "transformer": SD3Transformer2DModel(**F.SD35_MEDIUM).to(dtype),
                    "text_encoder": CLIPTextModelWithProjection(CLIPTextConfig(**F.CLIP_L)).to(dtype),
                    "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**F.CLIP_G)).to(dtype),
                    "tokenizer_2": build_tokenizer(),
                    "text_encoder_3": t5_model,
                    "tokenizer_3": build_t5_tokenizer(TINY_WORDS) if t5_model is not None else None,
                    "scheduler_config": dict(SD3_SCHEDULER_CONFIG),
                }
            else:
                parts = {
                    "transformer": FluxTransformer2DModel(**F.FLUX_DEV).to(dtype),
                    "text_encoder": CLIPTextModel(CLIPTextConfig(**F.CLIP_L)).to(dtype),
                    "text_encoder_2": t5_model,
                    "tokenizer_2": build_t5_tokenizer(TINY_WORDS),
                    "scheduler_config": dict(FLUX_SCHEDULER_CONFIG),
                }
        return FlowBundle(
            **parts, vae=vae, tokenizer=build_tokenizer(), source=f"random:{name}", sample_size=sample_size
        )

    return build


def _tiny(family: str) -> Callable[[torch.dtype, str], Any]:
    def build(dtype: torch.dtype, device: str) -> Any:
        from diffedit.tiny import tiny_bundle, tiny_sdxl_bundle
        from diffedit.tiny_flow import tiny_flux_bundle, tiny_sd3_bundle

        make = {
            "sd15": tiny_bundle,
            "sdxl": tiny_sdxl_bundle,
            "sd35-medium": tiny_sd3_bundle,
            "flux-dev": tiny_flux_bundle,
        }
        return make[family](0, dtype=dtype)

    return build


#: family -> builder(dtype, device) of a bundle with random weights at the published architecture.
FAMILIES: dict[str, Callable[[torch.dtype, str], Any]] = {
    "sd15": _fullsize("sd15"),
    "sdxl": _fullsize("sdxl"),
    "sd35-medium": _fullsize_flow("sd35-medium"),
    "flux-dev": _fullsize_flow("flux-dev"),
}
DRY_FAMILIES: dict[str, Callable[[torch.dtype, str], Any]] = {name: _tiny(name) for name in FAMILIES}
#: The edit measured: fewer steps than the defaults, so that a batch fits the budget.
BENCH_PARAMS = {"num_inference_steps": 10, "num_mask_draws": 2}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def unet_inputs(bundle: Any, batch: int) -> tuple[torch.Tensor, ...]:
    """Latents at the native size, the middle level of a 50-step grid, the caption's conditioning:
    the denoiser contract's arguments.  # (B, C, h, w), (B,), (B, L', D), (B,), (B,)"""
    size = bundle.native_size
    h = w = size // bundle.vae_scale_factor
    emb = bundle.encode_prompts(["a photo of a red circle"])  # (1, L', D)
    emb = bundle.condition_rows(emb.expand(batch, -1, -1), [(size, size)] * batch, [(size, size)] * batch)
    latents = torch.randn(batch, bundle.latent_channels, h, w, device=bundle.device, dtype=bundle.work_dtype)
    t, alpha, sigma = bundle.levels(50, (h, w)).at(torch.full((batch,), 25))  # (B,) each
    return latents, t.to(bundle.device), emb, alpha.to(bundle.device), sigma.to(bundle.device)


def evaluate(bundle: Any, inputs: tuple[torch.Tensor, ...]) -> Any:
    """One evaluation of the network through the denoiser contract (UNet or flow transformer)."""
    return bundle.denoise(*inputs)


def unet_flops(bundle: Any) -> int:
    """FLOPs of one network evaluation (one sample) at the native size (``FlopCounterMode``)."""
    from torch.utils.flop_counter import FlopCounterMode

    inputs = unet_inputs(bundle, 1)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        evaluate(bundle, inputs)
    return int(counter.get_total_flops())


@torch.inference_mode()
def time_unet(bundle: Any, batch: int, device: str, min_seconds: float) -> float:
    """UNet samples per second at ``batch`` (after one warm-up call)."""
    inputs = unet_inputs(bundle, batch)
    evaluate(bundle, inputs)
    _sync(device)
    calls, start = 0, time.perf_counter()
    while True:
        evaluate(bundle, inputs)
        calls += 1
        _sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and calls >= 2:
            return batch * calls / elapsed


def time_edits(bundle: Any, batch: int, device: str) -> tuple[float, float]:
    """(edits/s, UNet evaluations per edit) of one ``DiffEditor.edit`` of ``batch`` rows at the native
    size (after a warm-up edit of the same shapes)."""
    import numpy as np
    from PIL import Image

    from diffedit.editor import DiffEditor, EditRequest
    from diffedit.params import EditParams
    from pipeline.sizing import Geometry, plan_shape

    size = bundle.native_size
    # images per VAE call from the per-family plan (pipeline.sizing): SDXL's float32 VAE at 1024²
    vae_batch = None
    if device == "cuda":
        geometry = Geometry(bundle.family, bundle.native_size, bundle.pixel_multiple)
        vae_batch = plan_shape(geometry, "cuda")[0].vae_batch
    # No trajectory cache: the timed edit repeats the warm-up's images, which would skip their inversion.
    editor = DiffEditor(
        bundle,
        EditParams.from_dict(BENCH_PARAMS),
        max_batch=2 * batch,
        vae_batch=vae_batch,
        trajectory_cache=0,
    )
    rng = np.random.default_rng(0)
    requests = [
        EditRequest(
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)),
            "a blue circle",
            caption="a red circle",
            seed=i,
        )
        for i in range(batch)
    ]
    editor.edit(requests)
    _sync(device)
    start = time.perf_counter()
    results = editor.edit(requests)
    _sync(device)
    seconds = time.perf_counter() - start
    evals = sum(r.counters["unet_evals"] for r in results) / batch
    return batch / seconds, evals


def measure(
    builder: Callable[[torch.dtype, str], Any],
    cell: Cell,
    device: str,
    flops: dict[tuple[str, str], int],
    peak_tflops: float,
    min_seconds: float,
) -> Cell:
    """Fill ``cell`` (module docstring); an out-of-memory error is the cell's status, not the run's."""
    dtype = getattr(torch, cell.dtype)
    bundle = builder(dtype, device)
    if device == "cuda":
        for name in ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
            if getattr(bundle, name, None) is not None:
                getattr(bundle, name).to(device)
        torch.cuda.reset_peak_memory_stats()
    key = (cell.family, cell.dtype)
    if key not in flops:
        flops[key] = unet_flops(bundle)
    if cell.mode == "compiled":
        bundle.optimize(
            compile_unet=True, channels_last=True, max_batch=2 * cell.batch
        )  # the editor's max_batch
    try:
        cell.unet_evals_per_s = time_unet(bundle, cell.batch, device, min_seconds)
        cell.edits_per_s, cell.evals_per_edit = time_edits(bundle, cell.batch, device)
    except torch.OutOfMemoryError:
        cell.status = "out of memory"
        return cell
    finally:
        if device == "cuda":
            cell.peak_gib = torch.cuda.max_memory_allocated() / 2**30
        del bundle
        if device == "cuda":
            torch.cuda.empty_cache()
    cell.edits_per_s_at_140 = cell.unet_evals_per_s / DEFAULT_EVALS
    cell.tflops = flops[key] * cell.unet_evals_per_s / 1e12
    cell.utilisation = cell.tflops / peak_tflops
    return cell


def peak_of(device: str, override: float | None) -> float:
    """The dense fp16/bf16 peak of this device in TFLOP/s (``--peak-tflops`` wins; 1.0 on a CPU)."""
    if override:
        return override
    if device != "cuda":
        return 1.0
    name = torch.cuda.get_device_name()
    for key, value in PEAK_TFLOPS.items():
        if key in name:
            return value
    raise SystemExit(f"unknown peak for {name!r}: pass --peak-tflops")


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = "cpu" if args.dry else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or --dry for the tiny models on the CPU")
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    families = DRY_FAMILIES if args.dry else FAMILIES
    peak = peak_of(device, args.peak_tflops)
    started = time.perf_counter()
    flops: dict[tuple[str, str], int] = {}
    cells: list[Cell] = []
    for mode in args.modes:  # every eager cell first: the compiled ones are the budget's first victims
        for family in args.families:
            for dtype in args.dtypes:
                for batch in args.batches:
                    cell = Cell(family, dtype, mode, batch)
                    if time.perf_counter() - started > args.budget_s:
                        cell.status = "skipped (budget)"
                    else:
                        measure(families[family], cell, device, flops, peak, args.min_seconds)
                    cells.append(cell)
                    print(format_row(cell), flush=True)
    return {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (dry: tiny models)",
        "peak_tflops": peak,
        "seconds": time.perf_counter() - started,
        "budget_s": args.budget_s,
        "flops_per_eval": {f"{f}/{d}": v for (f, d), v in flops.items()},
        "bench_params": BENCH_PARAMS,
        "cells": [asdict(c) for c in cells],
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def format_row(cell: Cell) -> str:
    values = asdict(cell)
    values["utilisation"] = None if cell.utilisation is None else f"{cell.utilisation:.1%}"
    return "| " + " | ".join(_fmt(values[c]) for c in COLUMNS) + " |"


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"device: {result['device']}, peak {result['peak_tflops']:g} TFLOP/s; {result['seconds']:.0f} s "
        f"of a {result['budget_s']:g} s budget; edits at {result['bench_params']}",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += [format_row(Cell(**c)) for c in result["cells"]]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="tiny models on the CPU, float32, eager")
    parser.add_argument("--out", type=Path, default=Path("out/gpu"))
    parser.add_argument("--families", nargs="+", default=None)
    parser.add_argument("--dtypes", nargs="+", default=None)
    parser.add_argument("--modes", nargs="+", default=None, choices=["eager", "compiled"])
    parser.add_argument("--batches", nargs="+", type=int, default=None)
    parser.add_argument("--budget-s", type=float, default=480.0)
    parser.add_argument("--min-seconds", type=float, default=None, help="timed seconds per UNet figure")
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args(argv)
    families = DRY_FAMILIES if args.dry else FAMILIES
    args.families = args.families or list(families)
    unknown = sorted(set(args.families) - set(families))
    if unknown:
        parser.error(f"unknown families {unknown}; known: {sorted(families)}")
    args.dtypes = args.dtypes or (["float32"] if args.dry else ["bfloat16", "float16"])
    args.modes = args.modes or (["eager"] if args.dry else ["eager", "compiled"])
    args.batches = args.batches or ([1, 2] if args.dry else [8, 32])
    args.min_seconds = args.min_seconds if args.min_seconds is not None else (0.05 if args.dry else 2.0)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    table = format_table(result)
    (args.out / "gpu.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()

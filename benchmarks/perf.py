"""Performance benchmark of DiffEdit (issue 5): our ``DiffEditor`` side by side with diffusers' deprecated
``StableDiffusionDiffEditPipeline``, the model-bound fraction, the Ray job's throughput, and scaling.

    python -m benchmarks.perf --model models/shapes-v2 --rows 16 --out out/perf.json

Sections (``--sections``, all by default), every one on the same model, rows, seeds and parameters:

* ``compare``  ours and diffusers' pipeline over the same ``--rows`` held-out shapes edit tasks, in
  batches of ``--batch`` rows, ``--repeats`` passes, interleaved batch by batch (which method goes
  first alternates) so that drifting background load hits both alike; the speed ratio is the median
  of the ratios of adjacent batch pairs (the ratio of total times is reported too, and is hostage to
  load spikes). Each method first runs one untimed warm-up batch. Ours:
  ``DiffEditor.edit`` (a fresh editor, so a cold prompt cache) with ``max_batch=--max-batch`` samples
  per UNet call. Theirs: ``generate_mask`` + ``invert`` + ``__call__`` per batch with the same
  parameters (steps, n = ``num_maps_per_mask``, mask strength, r = ``inpaint_strength``, guidance in
  all three calls) and one generator per batch seeded with the batch's first row seed (diffusers then
  batches its VAE encodes; a list of generators would encode image by image). Image I/O, timed apart,
  is the PNG decode of the inputs and the PNG encode of the outputs (edit and mask) for both.
  Printed: edits/s, seconds per stage, UNet sample-evaluations per edit and the model-bound fraction.
* ``batch``    ours at batch sizes ``--batch-sizes`` (rows per ``edit`` call) over ``--scaling-rows``
  rows at ``--scaling-steps`` DDIM steps: seconds per edit, UNet ms per sample, model-bound fraction.
* ``size``     ours at image sizes ``--sizes`` on tiny random models whose UNet is
  ``tiny_components(sample_size=size / stride)``; with ``--size-vae-stride 8`` (default) the VAE is a
  tiny four-block AutoencoderKL of Stable Diffusion's stride 8, so the UNet runs at size / 8 as SD's
  does (512 px -> 64x64 latents); stride 2 keeps ``tiny_components``' own two-block VAE (512 px ->
  256x256 latents, minutes per edit on a CPU).
* ``ray``      the batch job (``pipeline.job.run_job``) in-process over a manifest of ``--ray-rows``
  rows (PNG bytes inline), against the in-process editor on the same rows, batch size, parameters and
  torch threads. ``ray.init`` is timed and reported apart; the job's time (everything ``run_job``
  does: manifest checks, the actor's model load, fetch/decode, edit, PNG encode, commits, summary) is
  what its rows/s is computed from. The in-process model load is reported apart too.

Model time is measured with forward pre-hooks and hooks (``time.perf_counter``, CUDA synchronised) on
the UNet, the VAE's encoder (+ quant_conv) and decoder (+ post_quant_conv), and the text encoder; the
UNet hook also counts the samples of every call, so evaluations per edit are counted, not computed.
The model-bound fraction is (UNet + VAE forward seconds) / wall seconds of the editor's ``edit`` calls.

Writes a JSON of every figure (``--out``) with the machine (CPU model, cores, torch threads, versions,
load average before and after each section) and the settings, and prints a summary with the targets
of issue 5. ``--profile PATH`` also runs ours once more under cProfile (untimed) and saves the stats.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import platform
import pstats
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from diffedit.bundle import ModelBundle
from diffedit.editor import DiffEditor, EditRequest
from diffedit.params import EditParams
from diffedit.reference import deprecated_diffedit_pipeline

SCHEMA = "diffedit-perf/1"
SECTIONS = ("compare", "batch", "size", "ray")
#: Stages whose seconds are reported per method; image_io and other complete the wall time.
STAGES = ("mask", "encode", "decode", "vae_encode", "vae_decode", "image_io", "other")
#: Model groups timed by hooks.
GROUPS = ("unet", "vae_encode", "vae_decode", "text")
TARGETS = {
    "speed_ratio": 1.4,
    "unet_evals_per_edit": 140,
    "model_bound_fraction": 0.85,
    "model_bound_min_batch": 4,
    "ray_ratio": 0.8,
    "ray_min_rows": 64,
}


# --------------------------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class BenchRow:
    """One edit: the input as PNG bytes (decoded inside the timed image I/O), texts and seed."""

    id: str
    png: bytes
    caption: str
    query: str
    seed: int


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of ``image`` (PIL's default compression, as the job writes them)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(data: bytes) -> Image.Image:
    """An RGB image from PNG bytes, fully loaded."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")


def make_rows(n: int, seed: int = 0, size: int = 64) -> list[BenchRow]:
    """``n`` held-out shapes edit tasks (``make_edit_tasks(seed, n, size)``) as rows; row i's edit seed
    is ``seed * 1_000_000 + i``."""
    from diffedit.shapes.scenes import make_edit_tasks

    tasks = make_edit_tasks(seed, n, size=size)
    return [
        BenchRow(t.id, encode_png(t.image.convert("RGB")), t.caption, t.query, seed * 1_000_000 + i)
        for i, t in enumerate(tasks)
    ]


def chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive slices of ``items`` of at most ``size``."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


# --------------------------------------------------------------------------------------------- timing


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    return None


class ModelTimer:
    """Wall seconds, calls and samples of the model's forward calls, through hooks.

    Groups: ``unet``; ``vae_encode`` (encoder + quant_conv); ``vae_decode`` (post_quant_conv +
    decoder); ``text`` (the text encoder). Samples are counted on the first module of each group (the
    batch size of its first tensor argument). Every UNet call is also logged as (samples, seconds).
    On CUDA each hook synchronises, so a call is charged its own kernels.
    """

    def __init__(self, bundle: ModelBundle) -> None:
        self.seconds = dict.fromkeys(GROUPS, 0.0)
        self.calls = dict.fromkeys(GROUPS, 0)
        self.samples = dict.fromkeys(GROUPS, 0)
        self.unet_log: list[tuple[int, float]] = []
        self._sync = bundle.device.type == "cuda"
        self._start: dict[int, float] = {}
        self._handles: list[Any] = []
        vae = bundle.vae
        targets = [
            ("unet", bundle.unet, True),
            ("vae_encode", vae.encoder, True),
            ("vae_encode", getattr(vae, "quant_conv", None), False),
            ("vae_decode", getattr(vae, "post_quant_conv", None), False),
            ("vae_decode", vae.decoder, True),
            ("text", bundle.text_encoder, True),
        ]
        for group, module, counts in targets:
            if isinstance(module, torch.nn.Module):
                self._attach(group, module, counts)

    def _attach(self, group: str, module: torch.nn.Module, counts: bool) -> None:
        key = id(module)

        def pre(mod: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            if self._sync:
                torch.cuda.synchronize()
            self._start[key] = time.perf_counter()
            if counts:
                x = _first_tensor(args, kwargs)
                n = int(x.shape[0]) if x is not None and x.dim() > 0 else 1
                self.samples[group] += n
                self.calls[group] += 1
                if group == "unet":
                    self.unet_log.append((n, 0.0))

        def post(mod: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if self._sync:
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - self._start.pop(key)
            self.seconds[group] += elapsed
            if group == "unet" and self.unet_log:
                n, _ = self.unet_log[-1]
                self.unet_log[-1] = (n, elapsed)

        self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        self._handles.append(module.register_forward_hook(post, with_kwargs=True))

    def snapshot(self) -> dict[str, float]:
        """The running totals: ``<group>_s``, ``<group>_n`` (samples), ``<group>_calls``, ``unet_log``."""
        out: dict[str, float] = {"unet_log": len(self.unet_log)}
        for g in GROUPS:
            out[f"{g}_s"] = self.seconds[g]
            out[f"{g}_n"] = self.samples[g]
            out[f"{g}_calls"] = self.calls[g]
        return out

    @staticmethod
    def diff(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
        return {k: after[k] - before[k] for k in after}

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> ModelTimer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass
class MethodStats:
    """Accumulated figures of one method over the batches it ran."""

    name: str
    rows: int = 0
    batches: int = 0
    edit_seconds: float = 0.0  # wall of the edit calls (no image I/O)
    io_seconds: float = 0.0  # PNG decode of inputs + PNG encode of outputs
    batch_seconds: list[float] = field(default_factory=list)  # edit + image I/O, per batch, in order
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES[:5], 0.0))
    stage_unet_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES[:3], 0.0))
    stage_unet_samples: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES[:3], 0))
    stage_text_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES[:3], 0.0))
    stage_split_ok: bool = True  # False when UNet calls could not be assigned to stages
    model: dict[str, float] = field(
        default_factory=lambda: {f"{g}_{k}": 0 for g in GROUPS for k in ("s", "n", "calls")}
    )
    counter_evals: dict[str, int] = field(default_factory=dict)  # ours: the editor's own counters

    def add_model(self, delta: dict[str, float]) -> None:
        for key in self.model:
            self.model[key] += delta[key]

    def summary(self) -> dict[str, Any]:
        """Every figure of the method, JSON-ready."""
        rows = max(self.rows, 1)
        m = self.model
        wall = self.edit_seconds + self.io_seconds
        seconds = dict(self.stage_seconds)
        seconds["image_io"] = self.io_seconds
        seconds["other"] = self.edit_seconds - sum(self.stage_seconds.values())
        model_s = m["unet_s"] + m["vae_encode_s"] + m["vae_decode_s"]
        non_model_by_stage = {
            s: seconds[s] - self.stage_unet_seconds[s] - self.stage_text_seconds[s]
            for s in STAGES[:3]
            if self.stage_split_ok
        }
        out: dict[str, Any] = {
            "rows": self.rows,
            "batches": self.batches,
            "edits_per_s": self.rows / wall if wall > 0 else None,
            "edits_per_s_excl_io": self.rows / self.edit_seconds if self.edit_seconds > 0 else None,
            "seconds_per_edit": wall / rows,
            "seconds_total": wall,
            "seconds_edit": self.edit_seconds,
            "seconds": seconds,
            "seconds_per_edit_by_stage": {k: v / rows for k, v in seconds.items()},
            "unet_evals_per_edit": m["unet_n"] / rows,
            "unet_evals_per_edit_by_stage": (
                {s: self.stage_unet_samples[s] / rows for s in STAGES[:3]} if self.stage_split_ok else None
            ),
            "unet_seconds_by_stage": dict(self.stage_unet_seconds) if self.stage_split_ok else None,
            "non_model_seconds_by_stage": non_model_by_stage or None,
            "unet_calls": int(m["unet_calls"]),
            "unet_samples_per_call": m["unet_n"] / m["unet_calls"] if m["unet_calls"] else None,
            "unet_ms_per_sample": 1000 * m["unet_s"] / m["unet_n"] if m["unet_n"] else None,
            "unet_seconds": m["unet_s"],
            "vae_encode_seconds": m["vae_encode_s"],
            "vae_decode_seconds": m["vae_decode_s"],
            "vae_encodes_per_edit": m["vae_encode_n"] / rows,
            "vae_decodes_per_edit": m["vae_decode_n"] / rows,
            "text_encoder_seconds": m["text_s"],
            "text_encoder_prompts": int(m["text_n"]),
            "model_seconds": model_s,
            "model_bound_fraction": model_s / self.edit_seconds if self.edit_seconds > 0 else None,
            "model_bound_fraction_incl_text": (
                (model_s + m["text_s"]) / self.edit_seconds if self.edit_seconds > 0 else None
            ),
            "non_model_seconds_per_edit": (self.edit_seconds - model_s - m["text_s"]) / rows,
        }
        if self.counter_evals:
            out["unet_evals_per_edit_editor_counters"] = {k: v / rows for k, v in self.counter_evals.items()}
        return out


def split_unet_calls(
    calls: Sequence[tuple[int, float]], counts: Sequence[int]
) -> list[tuple[int, float]] | None:
    """Assign consecutive UNet calls to consecutive stages by their counted samples.

    ``calls`` are (samples, seconds) in call order; ``counts`` the samples each stage evaluated, in
    stage order. Returns (samples, seconds) per stage, or None when a call would straddle two stages
    or the totals differ (e.g. an ``edit`` that split its rows into several buckets).
    """
    out = []
    i = 0
    for need in counts:
        samples, seconds = 0, 0.0
        while samples < need and i < len(calls):
            samples += calls[i][0]
            seconds += calls[i][1]
            i += 1
        if samples != need:
            return None
        out.append((samples, seconds))
    return out if i == len(calls) else None


# --------------------------------------------------------------------------------------------- methods


class OursRunner:
    """Runs ``DiffEditor.edit`` batch by batch and accumulates its figures."""

    def __init__(
        self, bundle: ModelBundle, params: EditParams, max_batch: int, timer: ModelTimer, name: str = "ours"
    ) -> None:
        self.bundle, self.params, self.max_batch = bundle, params, max_batch
        self.editor = DiffEditor(bundle, params, max_batch=max_batch)
        self.timer = timer
        self.stats = MethodStats(name)

    def new_pass(self) -> None:
        """A fresh editor (cold prompt cache) for the next pass over the rows."""
        self.editor = DiffEditor(self.bundle, self.params, max_batch=self.max_batch)

    def run_batch(self, rows: Sequence[BenchRow]) -> None:
        """Decode, edit and encode one batch; time each part."""
        t0 = time.perf_counter()
        images = [decode_png(r.png) for r in rows]
        io_seconds = time.perf_counter() - t0
        requests = [
            EditRequest(im, r.query, r.caption, seed=r.seed, id=r.id)
            for im, r in zip(images, rows, strict=True)
        ]
        before = self.timer.snapshot()
        t0 = time.perf_counter()
        results = self.editor.edit(requests)
        edit_seconds = time.perf_counter() - t0
        delta = ModelTimer.diff(self.timer.snapshot(), before)
        t0 = time.perf_counter()
        for res in results:
            encode_png(res.image)
            encode_png(res.mask_binary)
        io_seconds += time.perf_counter() - t0

        s = self.stats
        s.rows += len(rows)
        s.batches += 1
        s.edit_seconds += edit_seconds
        s.io_seconds += io_seconds
        s.batch_seconds.append(edit_seconds + io_seconds)
        s.add_model(delta)
        for stage in STAGES[:3]:
            s.stage_seconds[stage] += sum(r.counters[f"seconds_{stage}"] for r in results)
        s.stage_seconds["vae_encode"] += delta["vae_encode_s"]
        s.stage_seconds["vae_decode"] += delta["vae_decode_s"]
        s.stage_text_seconds["mask"] += delta["text_s"]  # the editor embeds the prompts inside its mask lap
        counts = {stage: int(sum(r.counters[f"unet_evals_{stage}"] for r in results)) for stage in STAGES[:3]}
        for stage, n in counts.items():
            s.counter_evals[stage] = s.counter_evals.get(stage, 0) + n
        start = int(before["unet_log"])
        split = split_unet_calls(self.timer.unet_log[start:], [counts[st] for st in STAGES[:3]])
        if split is None:
            s.stage_split_ok = False
        else:
            for stage, (n, sec) in zip(STAGES[:3], split, strict=True):
                s.stage_unet_samples[stage] += n
                s.stage_unet_seconds[stage] += sec


class DiffusersRunner:
    """Runs diffusers' ``generate_mask`` + ``invert`` + ``__call__`` batch by batch."""

    def __init__(self, pipe: Any, params: EditParams, timer: ModelTimer, name: str = "diffusers") -> None:
        self.pipe = pipe
        self.params = params
        self.timer = timer
        self.stats = MethodStats(name)

    def new_pass(self) -> None:
        """Nothing to reset: the pipeline keeps no cache between calls."""

    def run_batch(self, rows: Sequence[BenchRow]) -> None:
        """Decode, edit and encode one batch; time each part and each of the three calls."""
        p = self.params
        t0 = time.perf_counter()
        images = [decode_png(r.png) for r in rows]
        io_seconds = time.perf_counter() - t0
        captions, queries = [r.caption for r in rows], [r.query for r in rows]
        generator = torch.Generator().manual_seed(int(rows[0].seed))
        marks = [(time.perf_counter(), self.timer.snapshot())]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mask = self.pipe.generate_mask(
                image=images,
                source_prompt=captions,
                target_prompt=queries,
                num_maps_per_mask=p.num_mask_draws,
                mask_encode_strength=p.mask_strength,
                num_inference_steps=p.num_inference_steps,
                guidance_scale=p.guidance_scale,
                generator=generator,
                output_type="np",
            )  # (B, h, w) 0/1
            marks.append((time.perf_counter(), self.timer.snapshot()))
            inverted = self.pipe.invert(
                prompt=captions,
                image=images,
                num_inference_steps=p.num_inference_steps,
                inpaint_strength=p.encode_ratio,
                guidance_scale=p.guidance_scale,
                generator=generator,
            ).latents
            marks.append((time.perf_counter(), self.timer.snapshot()))
            edited = self.pipe(
                prompt=queries,
                mask_image=torch.from_numpy(np.asarray(mask, dtype=np.float32)),
                image_latents=inverted,
                inpaint_strength=p.encode_ratio,
                num_inference_steps=p.num_inference_steps,
                guidance_scale=p.guidance_scale,
                generator=generator,
                output_type="pil",
            ).images
            marks.append((time.perf_counter(), self.timer.snapshot()))
        t0 = time.perf_counter()
        for image, m, src in zip(edited, np.asarray(mask), images, strict=True):
            encode_png(image)
            binary = Image.fromarray((m > 0.5).astype(np.uint8) * 255, "L").resize(
                src.size, Image.Resampling.NEAREST
            )
            encode_png(binary)
        io_seconds += time.perf_counter() - t0

        s = self.stats
        s.rows += len(rows)
        s.batches += 1
        s.edit_seconds += marks[-1][0] - marks[0][0]
        s.io_seconds += io_seconds
        s.batch_seconds.append(marks[-1][0] - marks[0][0] + io_seconds)
        s.add_model(ModelTimer.diff(marks[-1][1], marks[0][1]))
        for stage, (t_a, snap_a), (t_b, snap_b) in zip(STAGES[:3], marks[:-1], marks[1:], strict=True):
            d = ModelTimer.diff(snap_b, snap_a)
            s.stage_seconds[stage] += (t_b - t_a) - d["vae_encode_s"] - d["vae_decode_s"]
            s.stage_seconds["vae_encode"] += d["vae_encode_s"]
            s.stage_seconds["vae_decode"] += d["vae_decode_s"]
            s.stage_unet_seconds[stage] += d["unet_s"]
            s.stage_unet_samples[stage] += int(d["unet_n"])
            s.stage_text_seconds[stage] += d["text_s"]


# --------------------------------------------------------------------------------------------- sections


def machine_info() -> dict[str, Any]:
    """The machine and software the figures come from."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": sys.version.split()[0], "torch": torch.__version__}
    for name in ("diffusers", "transformers", "ray", "numpy", "pillow"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:
            versions[name] = None
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = os.cpu_count()
    return {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cuda": torch.cuda.is_available(),
        "platform": platform.platform(),
        "versions": versions,
        "load_average_start": list(os.getloadavg()),
    }


def run_compare(
    bundle: ModelBundle,
    rows: Sequence[BenchRow],
    params: EditParams,
    *,
    batch: int,
    max_batch: int,
    warmup: bool = True,
    methods: Sequence[str] = ("ours", "diffusers"),
    repeats: int = 1,
) -> dict[str, Any]:
    """Ours and diffusers' pipeline over the same rows, batch by batch, interleaved, ``repeats``
    passes. Each batch of one method runs next to the same batch of the other, so the ratio of a
    pair of batches is taken under the same background load; their median is robust to load spikes
    that the ratio of total times is not."""
    pipe = deprecated_diffedit_pipeline(bundle) if "diffusers" in methods else None
    with ModelTimer(bundle) as timer:

        def runners() -> dict[str, Any]:
            made: dict[str, Any] = {}
            if "ours" in methods:
                made["ours"] = OursRunner(bundle, params, max_batch, timer)
            if pipe is not None:
                made["diffusers"] = DiffusersRunner(pipe, params, timer)
            return made

        if warmup:
            for runner in runners().values():
                runner.run_batch(rows[:batch])
        timed = runners()
        order = list(timed.values())
        i = 0
        for _ in range(repeats):
            for runner in order:
                runner.new_pass()
            for chunk in chunks(rows, batch):
                for runner in order if i % 2 == 0 else order[::-1]:
                    runner.run_batch(chunk)
                i += 1
    out: dict[str, Any] = {
        "rows": len(rows),
        "repeats": repeats,
        "batch": batch,
        "max_batch": max_batch,
        "warmup": warmup,
    }
    for name, runner in timed.items():
        out[name] = runner.stats.summary()
    if "ours" in out and "diffusers" in out:
        ours, theirs = out["ours"], out["diffusers"]
        paired = [
            t / o
            for o, t in zip(
                timed["ours"].stats.batch_seconds, timed["diffusers"].stats.batch_seconds, strict=True
            )
        ]
        out["ratio"] = {
            "edits_per_s_paired_median": float(np.median(paired)),
            "edits_per_s_paired": paired,
            "edits_per_s": _ratio(ours["edits_per_s"], theirs["edits_per_s"]),
            "edits_per_s_excl_io": _ratio(ours["edits_per_s_excl_io"], theirs["edits_per_s_excl_io"]),
            "unet_evals_per_edit_theirs_over_ours": _ratio(
                theirs["unet_evals_per_edit"], ours["unet_evals_per_edit"]
            ),
        }
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


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


def _ray_job_data(
    manifest: Path, output: Path, model: str, params: EditParams, batch: int, max_batch: int, threads: int
) -> dict[str, Any]:
    """The job, as the dict a job file would hold: configs/compute/cpu.yaml's compute section with the
    benchmark's batch size, max_batch and torch threads."""
    return {
        "name": "perf_benchmark",
        "input": {"paths": [str(manifest)]},
        "output": {"path": str(output), "rows_per_file": 64},
        "model": {"source": model},
        "params": params.to_dict(),
        "compute": {
            "device": "cpu",
            "dtype": "float32",
            "actors": 1,
            "cpus_per_actor": 1,
            "torch_threads": threads,
            "batch_size": batch,
            "max_batch": max_batch,
            "io_cpus": 0.25,
            "rows_per_block": 16,
        },
        "failure": {"max_failed_fraction": 0.0},
    }


def in_process_baseline(
    model: str,
    rows: Sequence[BenchRow],
    params: EditParams,
    *,
    batch: int,
    max_batch: int,
    warmup: bool = True,
) -> dict[str, Any]:
    """The in-process editor on the Ray section's rows: ``load_bundle`` (timed apart), an untimed
    warm-up batch, then the rows in batches of ``batch`` with the model resident. Also times the
    image I/O the job does (PNG decode of the input; PNG encode of input, edit and mask)."""
    from diffedit.loading import load_bundle

    t0 = time.perf_counter()
    bundle = load_bundle(model)
    load_seconds = time.perf_counter() - t0
    with ModelTimer(bundle) as timer:
        if warmup:
            OursRunner(bundle, params, max_batch, timer).run_batch(rows[:batch])
        runner = OursRunner(bundle, params, max_batch, timer)
        input_png_seconds = 0.0
        for chunk in chunks(rows, batch):
            runner.run_batch(chunk)
            t0 = time.perf_counter()
            for r in chunk:  # the job also re-encodes the input as PNG
                encode_png(decode_png(r.png))
            input_png_seconds += time.perf_counter() - t0
    s = runner.stats.summary()
    with_io = s["seconds_edit"] + s["seconds"]["image_io"] + input_png_seconds
    return {
        "model_load_seconds": load_seconds,
        "seconds_edit": s["seconds_edit"],
        "rows_per_s": s["edits_per_s_excl_io"],
        "rows_per_s_with_io": len(rows) / with_io if with_io > 0 else None,
        "model_bound_fraction": s["model_bound_fraction"],
        "unet_ms_per_sample": s["unet_ms_per_sample"],
        "load_average": list(os.getloadavg()),
    }


def cold_start_seconds(model: str) -> float:
    """Wall seconds of a fresh Python process that imports what a job's model actor imports and
    loads the model: the fixed start-up cost each actor pays before its first row."""
    import subprocess

    code = (
        "import sys, torch, diffusers, transformers\n"
        "import pipeline.stages\n"
        "from diffedit.loading import load_bundle\n"
        "load_bundle(sys.argv[1])\n"
    )
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, model], check=True, capture_output=True)
    return time.perf_counter() - t0


def job_timeline(events: Sequence[dict[str, Any]], start: float, end: float) -> dict[str, Any] | None:
    """Where the job's time went, from Ray's task timeline (``ray.timeline()``, Chrome-trace events
    with ``ts``/``dur`` in microseconds since the epoch), relative to ``run_job``'s start.

    The model actor is the worker that runs Ray Data's ``submit`` method (one call per block); its
    ``__init__`` is the actor's start-up (process, argument deserialisation, ``EditStage.__init__``:
    imports and ``load_bundle``). Returns None when no such events are found.
    """
    spans: dict[str, list[tuple[float, float, str]]] = {}
    for e in events:
        if e.get("ph") != "X" or "ts" not in e or "dur" not in e:
            continue
        t = e["ts"] / 1e6 - start
        if t < -1.0:  # an earlier job on a long-lived cluster
            continue
        spans.setdefault(str(e.get("name")), []).append((t, t + e["dur"] / 1e6, str(e.get("tid"))))
    submits = spans.get("submit", [])
    if not submits:
        return None
    workers = {w for _, _, w in submits}
    inits = [(a, b) for a, b, w in spans.get("__init__", []) if w in workers]
    first, last = min(a for a, _, _ in submits), max(b for _, b, _ in submits)
    busy = sum(b - a for a, b, _ in submits)
    return {
        "actor_init_start": min(a for a, _ in inits) if inits else None,
        "actor_ready": max(b for _, b in inits) if inits else None,
        "actor_init_seconds": sum(b - a for a, b in inits) if inits else None,
        "first_block_start": first,
        "last_block_end": last,
        "blocks": len(submits),
        "actor_busy_seconds": busy,
        "actor_idle_between_blocks": (last - first) - busy,
        "after_last_block": (end - start) - last,
    }


def run_ray(
    model: str,
    rows: Sequence[BenchRow],
    params: EditParams,
    *,
    batch: int,
    max_batch: int,
    workdir: Path,
    address: str | None = None,
    warmup: bool = True,
    baseline_after: bool = True,
) -> dict[str, Any]:
    """The Ray job over ``rows`` against the in-process editor on the same rows.

    In-process (``in_process_baseline``) before the job and, with ``baseline_after``, again after it
    (the mean is the reference: background load drifts over minutes). Ray: ``ray.init`` (timed
    apart; skipped when Ray is already up), then ``run_job`` on a manifest of the same rows (ids, PNG
    bytes, texts, seeds), the job's torch threads set to this process's. Its rows/s is rows over the
    wall time of ``run_job``. A model process's cold start (``cold_start_seconds``) is measured apart
    to show how much of the job's time is the actor's fixed start-up.
    """
    try:
        from pipeline.config import StorageConfig, build_job
        from pipeline.job import ExitCode, run_job
        from pipeline.prepare import write_manifest
    except ImportError as exc:
        return {"status": "pending", "reason": f"the pipeline package is not importable: {exc}"}
    import pyarrow as pa

    threads = torch.get_num_threads()
    kwargs = {"batch": batch, "max_batch": max_batch, "warmup": warmup}
    baselines = [in_process_baseline(model, rows, params, **kwargs)]
    cold_start = cold_start_seconds(model)

    workdir.mkdir(parents=True, exist_ok=True)
    manifest_dir, output = workdir / "manifest", workdir / "output"
    shutil.rmtree(manifest_dir, ignore_errors=True)
    schema = pa.schema(
        [("id", pa.string()), ("image_bytes", pa.binary()), ("caption", pa.string()),
         ("query", pa.string()), ("seed", pa.int64())]
    )  # fmt: skip
    manifest = write_manifest(
        [
            {"id": r.id, "image_bytes": r.png, "caption": r.caption, "query": r.query, "seed": r.seed}
            for r in rows
        ],
        str(manifest_dir),
        StorageConfig(),
        schema,
    )
    job = build_job(
        _ray_job_data(Path(manifest), output, model, params, batch, max_batch, threads),
        source="benchmarks.perf",
    )
    import ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    started_here = False
    t0 = time.perf_counter()
    if not ray.is_initialized():
        if address or os.environ.get("RAY_ADDRESS"):
            ray.init(address=address or os.environ["RAY_ADDRESS"], log_to_driver=False)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
            started_here = True
    ray_init_seconds = time.perf_counter() - t0
    try:
        t0, wall0 = time.perf_counter(), time.time()
        outcome = run_job(job, overwrite=True)
        job_seconds = time.perf_counter() - t0
        try:
            timeline = job_timeline(ray.timeline(), wall0, wall0 + job_seconds)
        except Exception as exc:  # best effort: the figures above stand without it
            timeline = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        if started_here:
            ray.shutdown()
    load_during_job = list(os.getloadavg())
    if baseline_after:
        baselines.append(in_process_baseline(model, rows, params, **kwargs))

    summary = outcome.summary or {}
    this_run = summary.get("this_run", {})
    stages = this_run.get("seconds_per_stage") or {}
    edit_total = (stages.get("edit") or {}).get("total")
    ray_rows_per_s = len(rows) / job_seconds if job_seconds > 0 else None
    in_process = float(np.mean([b["rows_per_s"] for b in baselines]))
    in_process_with_io = float(np.mean([b["rows_per_s_with_io"] for b in baselines]))
    warm_seconds = job_seconds - cold_start
    return {
        "status": "measured" if outcome.exit_code == ExitCode.OK else "failed",
        "exit_code": int(outcome.exit_code),
        "message": outcome.message,
        "rows": len(rows),
        "batch": batch,
        "max_batch": max_batch,
        "torch_threads": threads,
        "ray_init_seconds": ray_init_seconds,
        "ray_started_here": started_here,
        "job_seconds": job_seconds,
        "job_seconds_execute": this_run.get("seconds_execute"),
        "rows_per_s": ray_rows_per_s,
        "rows_per_s_execute": this_run.get("rows_per_second"),
        "rows_ok": (summary.get("output") or {}).get("ok"),
        "job_seconds_per_stage": stages,
        "job_edit_seconds": edit_total,  # the actor's editor time, summed over rows (counters' seconds_total)
        "job_seconds_outside_edit": job_seconds - edit_total if edit_total is not None else None,
        "rows_per_s_edit_only": len(rows) / edit_total if edit_total else None,
        "load_average_after_job": load_during_job,
        "cold_start_seconds": cold_start,
        "timeline": timeline,
        "rows_per_s_steady": (
            len(rows) / (timeline["last_block_end"] - timeline["first_block_start"])
            if timeline and timeline.get("last_block_end")
            else None
        ),
        "rows_per_s_excl_cold_start": len(rows) / warm_seconds if warm_seconds > 0 else None,
        "in_process": baselines,
        "in_process_model_load_seconds": baselines[0]["model_load_seconds"],
        "in_process_rows_per_s": in_process,
        "in_process_rows_per_s_with_io": in_process_with_io,
        "in_process_model_bound_fraction": baselines[0]["model_bound_fraction"],
        "ratio": _ratio(ray_rows_per_s, in_process),
        "ratio_vs_in_process_with_io": _ratio(ray_rows_per_s, in_process_with_io),
        "ratio_excl_cold_start": _ratio(len(rows) / warm_seconds if warm_seconds > 0 else None, in_process),
        "job": job.to_dict()["compute"],
    }


def profile_ours(
    bundle: ModelBundle,
    rows: Sequence[BenchRow],
    params: EditParams,
    *,
    batch: int,
    max_batch: int,
    path: Path,
    top: int = 30,
) -> dict[str, Any]:
    """Ours once more under cProfile (untimed; the profiler's overhead inflates small calls). Saves
    the stats to ``path`` and returns the top functions by own time."""
    editor = DiffEditor(bundle, params, max_batch=max_batch)
    requests = [EditRequest(decode_png(r.png), r.query, r.caption, seed=r.seed, id=r.id) for r in rows]
    profiler = cProfile.Profile()
    profiler.enable()
    for chunk in chunks(requests, batch):
        editor.edit(chunk)
    profiler.disable()
    path.parent.mkdir(parents=True, exist_ok=True)
    profiler.dump_stats(str(path))
    stats = pstats.Stats(profiler)
    entries = []
    for (filename, line, name), (_cc, nc, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        entries.append(
            {"function": f"{Path(filename).name}:{line}({name})", "calls": nc, "tottime": tt, "cumtime": ct}
        )
    entries.sort(key=lambda e: e["tottime"], reverse=True)
    return {"path": str(path), "rows": len(rows), "top_by_tottime": entries[:top]}


# --------------------------------------------------------------------------------------------- report


def evaluate_targets(report: dict[str, Any]) -> dict[str, Any]:
    """Issue 5's targets against the measured figures (None where a section was not run)."""
    defaults = report.get("settings", {}).get("params_are_defaults", False)
    compare = report.get("compare") or {}
    out: dict[str, Any] = {}

    ratios = compare.get("ratio") or {}
    ratio = ratios.get("edits_per_s_paired_median")
    out["speed_ratio"] = {
        "target": f">= {TARGETS['speed_ratio']}x diffusers' edits/s (median over paired batches)",
        "value": ratio,
        "ratio_of_totals": ratios.get("edits_per_s"),
        "met": None if ratio is None else ratio >= TARGETS["speed_ratio"],
    }
    evals = (compare.get("ours") or {}).get("unet_evals_per_edit")
    out["unet_evals_per_edit"] = {
        "target": f"<= {TARGETS['unet_evals_per_edit']} at defaults",
        "value": evals,
        "met": None if evals is None or not defaults else evals <= TARGETS["unet_evals_per_edit"],
        "at_defaults": defaults,
    }
    fractions = []
    if compare.get("ours") and compare.get("batch", 0) >= TARGETS["model_bound_min_batch"]:
        fractions.append(("compare", compare["batch"], compare["ours"]["model_bound_fraction"]))
    for p in (report.get("batch") or {}).get("points", []):
        if p["batch"] >= TARGETS["model_bound_min_batch"]:
            fractions.append(("batch", p["batch"], p["model_bound_fraction"]))
    worst = min(fractions, key=lambda f: f[2]) if fractions else None
    out["model_bound_fraction"] = {
        "target": f">= {TARGETS['model_bound_fraction']} at batch >= {TARGETS['model_bound_min_batch']}",
        "value": worst[2] if worst else None,
        "worst_at": {"section": worst[0], "batch": worst[1]} if worst else None,
        "all": [{"section": s, "batch": b, "value": v} for s, b, v in fractions],
        "met": None if worst is None else worst[2] >= TARGETS["model_bound_fraction"],
    }
    ray_ = report.get("ray") or {}
    r = ray_.get("ratio")
    out["ray_ratio"] = {
        "target": f">= {TARGETS['ray_ratio']}x in-process rows/s over >= {TARGETS['ray_min_rows']} rows",
        "value": r,
        "rows": ray_.get("rows"),
        "status": ray_.get("status", "not run"),
        "met": None
        if r is None
        else (r >= TARGETS["ray_ratio"] and ray_.get("rows", 0) >= TARGETS["ray_min_rows"]),
    }
    return out


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}f}"
    return str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in header]] + [[_f(c) if not isinstance(c, str) else c for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    """The printed summary: machine, each section's table, the targets."""
    m = report["machine"]
    s = report["settings"]
    out = [
        f"machine: {m['cpu_model']} | {m['cpus_usable']} usable CPUs | torch {m['versions']['torch']} on "
        f"{m['torch_threads']} thread(s) | load average {m['load_average_start'][0]:.2f} at start, "
        f"{m.get('load_average_end', [float('nan')])[0]:.2f} at end",
        f"model: {s['model']} | params: {json.dumps(s['params'])}",
    ]
    c = report.get("compare")
    if c:
        out.append(f"\n== ours vs diffusers' StableDiffusionDiffEditPipeline: {c['rows']} rows x {c['repeats']} passes, batch {c['batch']}, "
                   f"our max_batch {c['max_batch']} ==")  # fmt: skip
        names = [n for n in ("ours", "diffusers") if n in c]
        rows: list[list[Any]] = [
            ["edits/s", *[c[n]["edits_per_s"] for n in names]],
            ["edits/s excl. image I/O", *[c[n]["edits_per_s_excl_io"] for n in names]],
            ["s/edit", *[c[n]["seconds_per_edit"] for n in names]],
        ]
        for stage in STAGES:
            rows.append([f"  s/edit {stage}", *[c[n]["seconds_per_edit_by_stage"][stage] for n in names]])
        rows += [
            ["UNet evals/edit (counted)", *[c[n]["unet_evals_per_edit"] for n in names]],
        ]
        for stage in STAGES[:3]:
            rows.append(
                [
                    f"  evals/edit {stage}",
                    *[(c[n]["unet_evals_per_edit_by_stage"] or {}).get(stage) for n in names],
                ]
            )
        rows += [
            ["UNet calls", *[c[n]["unet_calls"] for n in names]],
            ["UNet samples/call", *[c[n]["unet_samples_per_call"] for n in names]],
            ["UNet ms/sample", *[c[n]["unet_ms_per_sample"] for n in names]],
            ["VAE encodes/edit", *[c[n]["vae_encodes_per_edit"] for n in names]],
            ["VAE decodes/edit", *[c[n]["vae_decodes_per_edit"] for n in names]],
            ["text encoder s", *[c[n]["text_encoder_seconds"] for n in names]],
            ["model-bound fraction", *[c[n]["model_bound_fraction"] for n in names]],
            ["non-model s/edit", *[c[n]["non_model_seconds_per_edit"] for n in names]],
        ]
        for stage in STAGES[:3]:
            rows.append(
                [
                    f"  non-model s {stage}",
                    *[(c[n]["non_model_seconds_by_stage"] or {}).get(stage) for n in names],
                ]
            )
        out.append(_table(["", *names], rows))
        if "ratio" in c:
            r = c["ratio"]
            out.append(
                f"ratio ours/diffusers: edits/s {_f(r['edits_per_s_paired_median'], 2)}x, median of "
                f"{len(r['edits_per_s_paired'])} paired batches (range {_f(min(r['edits_per_s_paired']), 2)}-"
                f"{_f(max(r['edits_per_s_paired']), 2)}); of total times {_f(r['edits_per_s'], 2)}x (excl. image I/O "
                f"{_f(r['edits_per_s_excl_io'], 2)}x); their UNet evals per edit / ours "
                f"{_f(r['unet_evals_per_edit_theirs_over_ours'], 2)}"
            )
    b = report.get("batch")
    if b:
        out.append(
            f"\n== ours by batch size: {b['rows']} rows, {b['num_inference_steps']} steps, max_batch {b['max_batch']} =="
        )
        out.append(
            _table(
                [
                    "batch",
                    "s/edit",
                    "edits/s",
                    "UNet ms/sample",
                    "samples/call",
                    "model-bound",
                    "non-model s/edit",
                ],
                [
                    [
                        p["batch"],
                        p["seconds_per_edit"],
                        p["edits_per_s"],
                        p["unet_ms_per_sample"],
                        p["unet_samples_per_call"],
                        p["model_bound_fraction"],
                        p["non_model_seconds_per_edit"],
                    ]
                    for p in b["points"]
                ],
            )
        )
    z = report.get("size")
    if z:
        out.append(
            f"\n== ours by image size: {z['model']}, {z['rows']} rows, batch {z['batch']}, "
            f"{z['num_inference_steps']} steps =="
        )
        out.append(
            _table(
                ["size", "latent", "s/edit", "UNet ms/sample", "VAE enc+dec s/edit", "model-bound"],
                [
                    [
                        f"{p['size']}x{p['size']}",
                        p["latent"],
                        p["seconds_per_edit"],
                        p["unet_ms_per_sample"],
                        (p["vae_encode_seconds"] + p["vae_decode_seconds"]) / max(p["rows"], 1),
                        p["model_bound_fraction"],
                    ]
                    for p in z["points"]
                ],
            )
        )
    r = report.get("ray")
    if r:
        out.append("\n== Ray job vs in-process editor ==")
        if r.get("status") not in ("measured", "failed"):
            out.append(f"{r.get('status')}: {r.get('reason', '')}")
        else:
            out.append(
                _table(
                    ["", "value"],
                    [
                        ["status", f"{r['status']} ({r['message']})"],
                        ["rows", r["rows"]],
                        ["ray.init s (excluded)", r["ray_init_seconds"]],
                        ["job s (run_job, excl. ray.init)", r["job_seconds"]],
                        ["Ray rows/s", r["rows_per_s"]],
                        ["Ray rows/s (execute phase)", r["rows_per_s_execute"]],
                        ["  job s inside the editor (sum of rows)", r["job_edit_seconds"]],
                        ["  job s outside it (start-up, load, I/O)", r["job_seconds_outside_edit"]],
                        ["  actor ready at s (timeline)", (r.get("timeline") or {}).get("actor_ready")],
                        [
                            "  actor start-up s (timeline)",
                            (r.get("timeline") or {}).get("actor_init_seconds"),
                        ],
                        [
                            "  first block at s / last block end s",
                            " / ".join(
                                _f((r.get("timeline") or {}).get(k))
                                for k in ("first_block_start", "last_block_end")
                            ),
                        ],
                        ["Ray rows/s first to last block", r.get("rows_per_s_steady")],
                        ["model process cold start s (apart)", r["cold_start_seconds"]],
                        ["Ray rows/s excl. that cold start", r["rows_per_s_excl_cold_start"]],
                        ["in-process rows/s (model resident)", r["in_process_rows_per_s"]],
                        [
                            "  before / after the job",
                            " / ".join(_f(b["rows_per_s"]) for b in r["in_process"]),
                        ],
                        ["in-process rows/s incl. PNG I/O", r["in_process_rows_per_s_with_io"]],
                        ["in-process model load s (apart)", r["in_process_model_load_seconds"]],
                        ["Ray / in-process", r["ratio"]],
                        ["Ray / in-process excl. cold start", r["ratio_excl_cold_start"]],
                    ],
                )
            )
    out.append("\n== targets (issue 5) ==")
    rows = []
    for name, t in report["targets"].items():
        met = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        rows.append([name, t["target"], t["value"], met])
    out.append(_table(["target", "wanted", "measured", ""], rows))
    return "\n".join(out)


# --------------------------------------------------------------------------------------------- command


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.perf",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="models/shapes-v2", help="model directory or URL (load_bundle)")
    p.add_argument(
        "--tiny", action="store_true", help="a tiny random model saved under the work folder (smoke test)"
    )
    p.add_argument("--out", default="out/perf.json", help="the JSON of every figure")
    p.add_argument(
        "--workdir", default=None, help="manifest and job output of the ray section (default: <out>_work)"
    )
    p.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    p.add_argument("--rows", type=int, default=16, help="rows of the compare section")
    p.add_argument("--repeats", type=int, default=3, help="compare section: passes over the rows")
    p.add_argument(
        "--seed", type=int, default=0, help="task stream of make_edit_tasks; row i's edit seed is seed*1e6+i"
    )
    p.add_argument("--size", type=int, default=64, help="image size of the rows (compare, batch, ray)")
    p.add_argument(
        "--batch", type=int, default=8, help="rows per batch (both methods, and the Ray job's batch_size)"
    )
    p.add_argument(
        "--max-batch", type=int, default=16, help="our UNet samples per call (DiffEditor.max_batch)"
    )
    p.add_argument("--methods", default="ours,diffusers", help="compare section: ours, diffusers or both")
    p.add_argument(
        "--steps", type=int, default=EditParams.num_inference_steps, help="DDIM steps (compare, ray)"
    )
    p.add_argument("--draws", type=int, default=EditParams.num_mask_draws, help="mask noise draws n")
    p.add_argument("--ratio", type=float, default=EditParams.encode_ratio, help="encoding ratio r")
    p.add_argument("--guidance", type=float, default=EditParams.guidance_scale, help="guidance scale")
    p.add_argument("--batch-sizes", default="1,2,4,8,16", help="batch section: rows per edit call")
    p.add_argument("--scaling-rows", type=int, default=16, help="batch section: rows at every batch size")
    p.add_argument("--scaling-steps", type=int, default=20, help="DDIM steps of the batch and size sections")
    p.add_argument("--sizes", default="64,128,256,512", help="size section: image sides in pixels")
    p.add_argument("--size-rows", type=int, default=2, help="size section: rows per size")
    p.add_argument("--size-batch", type=int, default=2, help="size section: rows per edit call")
    p.add_argument("--size-vae-stride", type=int, default=8, choices=[2, 8], help="size section: VAE stride")
    p.add_argument("--ray-rows", type=int, default=64, help="ray section: rows (the target needs >= 64)")
    p.add_argument(
        "--ray-baseline-once",
        action="store_true",
        help="ray section: in-process baseline before the job only",
    )
    p.add_argument(
        "--ray-address", default=None, help="ray section: an existing cluster (default: start one)"
    )
    p.add_argument(
        "--no-warmup", action="store_true", help="skip the untimed warm-up batch of every measurement"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine two threads spin against other processes "
        "and run 10-100x slower); 0 = torch's default",
    )
    p.add_argument("--profile", default=None, help="also profile ours under cProfile, stats to this path")
    return p.parse_args(argv)


def quiet_libraries() -> None:
    """Only errors from diffusers and transformers (their deprecation and prompt-truncation notices
    would otherwise repeat for every batch)."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the selected sections; return the report (also written to ``args.out``)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_libraries()
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"unknown section(s) {unknown}; known: {list(SECTIONS)}")
    out_path = Path(args.out)
    workdir = Path(args.workdir) if args.workdir else out_path.with_name(out_path.stem + "_work")
    started = time.perf_counter()
    params = EditParams(
        num_inference_steps=args.steps,
        num_mask_draws=args.draws,
        encode_ratio=args.ratio,
        guidance_scale=args.guidance,
    )
    scaling_params = params.replace(num_inference_steps=args.scaling_steps)
    model = args.model
    if args.tiny:
        from diffedit.tiny import save_tiny_model

        model = str(save_tiny_model(workdir / "tiny_model", seed=0, sample_size=args.size // 2))
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "-m", "benchmarks.perf", *sys.argv[1:]]),
        "machine": machine_info(),
        "settings": {
            "model": model,
            "sections": sections,
            "params": params.to_dict(),
            "params_are_defaults": params == EditParams(),
            "scaling_params": scaling_params.to_dict(),
            **{k: v for k, v in vars(args).items() if k not in ("model", "sections")},
        },
        "load_average": {},
    }
    bundle = None
    if {"compare", "batch"} & set(sections):
        from diffedit.loading import load_bundle

        t0 = time.perf_counter()
        bundle = load_bundle(model)
        report["settings"]["model_load_seconds"] = time.perf_counter() - t0
        report["settings"]["weights_sha256"] = bundle.weights_hash
        report["settings"]["model_native_size"] = bundle.native_size
    warmup = not args.no_warmup

    def section(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        before = list(os.getloadavg())
        t0 = time.perf_counter()
        print(f"[perf] {name} ...", file=sys.stderr, flush=True)
        report[name] = fn()
        report[name]["wall_seconds"] = time.perf_counter() - t0
        report["load_average"][name] = {"before": before, "after": list(os.getloadavg())}

    if "compare" in sections:
        assert bundle is not None
        rows = make_rows(args.rows, args.seed, args.size)
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        section(
            "compare",
            lambda: run_compare(
                bundle,
                rows,
                params,
                batch=args.batch,
                max_batch=args.max_batch,
                warmup=warmup,
                methods=methods,
                repeats=args.repeats,
            ),
        )
        if args.profile:
            report["profile"] = profile_ours(
                bundle, rows, params, batch=args.batch, max_batch=args.max_batch, path=Path(args.profile)
            )
    if "batch" in sections:
        assert bundle is not None
        rows = make_rows(args.scaling_rows, args.seed, args.size)
        sizes = [int(b) for b in args.batch_sizes.split(",")]
        section(
            "batch",
            lambda: run_batch_scaling(
                bundle, rows, scaling_params, batch_sizes=sizes, max_batch=args.max_batch, warmup=warmup
            ),
        )
    if "size" in sections:
        sizes = [int(s) for s in args.sizes.split(",")]
        section(
            "size",
            lambda: run_size_scaling(
                sizes,
                scaling_params,
                rows=args.size_rows,
                batch=args.size_batch,
                max_batch=args.max_batch,
                vae_stride=args.size_vae_stride,
                seed=args.seed,
                warmup=warmup,
            ),
        )
    if "ray" in sections:
        bundle = None  # free the compare model before the job's actor loads its own
        rows = make_rows(args.ray_rows, args.seed, args.size)
        section(
            "ray",
            lambda: run_ray(
                model,
                rows,
                params,
                batch=args.batch,
                max_batch=args.max_batch,
                workdir=workdir,
                address=args.ray_address,
                warmup=warmup,
                baseline_after=not args.ray_baseline_once,
            ),
        )
    report["machine"]["load_average_end"] = list(os.getloadavg())
    report["wall_seconds"] = time.perf_counter() - started
    report["targets"] = evaluate_targets(report)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print(format_report(report))
    print(f"\nwall {report['wall_seconds']:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

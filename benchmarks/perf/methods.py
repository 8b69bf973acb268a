"""The two methods compared batch by batch: ours (``DiffEditor``) and diffusers' deprecated pipeline."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.perf.common import STAGES
from benchmarks.perf.rows import BenchRow, decode_png, encode_png
from benchmarks.perf.timing import MethodStats, ModelTimer, split_unet_calls
from diffedit.bundle import ModelBundle
from diffedit.editor import DiffEditor, EditRequest
from diffedit.params import EditParams


class OursRunner:
    """Runs ``DiffEditor.edit`` batch by batch and accumulates its figures."""

    def __init__(
        self, bundle: ModelBundle, params: EditParams, max_batch: int, timer: ModelTimer, name: str = "ours"
    ) -> None:
        self.bundle, self.params, self.max_batch = bundle, params, max_batch
        self.editor = DiffEditor(
            bundle, params, max_batch=max_batch, trajectory_cache=0
        )  # timed repeats: no cache
        self.timer = timer
        self.stats = MethodStats(name)

    def new_pass(self) -> None:
        """A fresh editor (cold prompt cache) for the next pass over the rows."""
        self.editor = DiffEditor(self.bundle, self.params, max_batch=self.max_batch, trajectory_cache=0)

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

"""Model time through hooks (``ModelTimer``), per-method accumulation (``MethodStats``), and the split of
logged UNet calls into DiffEdit stages."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from benchmarks.perf.common import GROUPS, STAGES
from diffedit.bundle import ModelBundle


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

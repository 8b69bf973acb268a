"""Section ``precision``: precision and compile variants of one model, side by side, for speed and
quality.

Variants (``VARIANTS``): float32 (the reference), bfloat16, float16, channels_last (float32, NHWC
convolutions), bfloat16 + channels_last, and ``torch.compile`` of the UNet (float32, through
``diffedit.compiled.CompiledUNet``). Each is a ``load_bundle`` of the same weights in that dtype, then
``ModelBundle.optimize``. float16 on a CPU is refused by ``load_bundle`` (``resolve_dtype``); here it is
forced (loaded in float32, cast) only to measure it, and reported as ``forced``.

Speed: the same ``rows`` in batches of ``batch``, ``repeats`` passes; in every batch each variant runs
the same rows with ``DiffEditor.edit`` (a fresh editor per pass), the order of the variants rotating
from batch to batch; a variant's speed ratio against float32 is the median over batches of
(float32 seconds / variant seconds) on the same batch (robust to load spikes), and edits/s are from
total times. Each variant first runs one untimed warm-up batch (for compile: the compilation; its
seconds and the number of graphs compiled are reported, and the graphs compiled during the timed
passes, which must be 0: a batch composition never recompiles).

Quality: ``quality_tasks`` held-out tasks of the quality benchmark (``benchmarks.quality``: the same
tasks, per-task seeds and scoring), ours at ``quality_steps`` DDIM steps and encoding ratio
``quality_ratio``, per variant; per task the edit success (0/1) and the background PSNR; the deltas
against float32 are paired by task, with a 95 % paired-bootstrap interval (``bootstrap_delta``). A
variant holds quality when the interval's lower bound is above ``-SUCCESS_MARGIN`` (success) and
``-PSNR_MARGIN_DB`` (background PSNR): a non-inferiority test with stated margins.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.perf.methods import OursRunner
from benchmarks.perf.rows import BenchRow, chunks
from benchmarks.perf.timing import ModelTimer
from diffedit.bundle import ModelBundle
from diffedit.params import EditParams

#: Non-inferiority margins of the quality test: a variant may lose at most this much.
SUCCESS_MARGIN = 0.03  # edit success rate (fraction of tasks)
PSNR_MARGIN_DB = 0.5  # background PSNR, dB


@dataclass(frozen=True)
class Variant:
    """One way to run the model: a dtype and ``ModelBundle.optimize`` options."""

    name: str
    dtype: str  # float32, bfloat16, float16
    channels_last: bool = False  # NHWC convolutions (UNet and VAE)
    compile_unet: bool = False  # torch.compile of the UNet (CompiledUNet)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("float32", "float32"),
        Variant("bfloat16", "bfloat16"),
        Variant("float16", "float16"),
        Variant("channels_last", "float32", channels_last=True),
        Variant("bfloat16_channels_last", "bfloat16", channels_last=True),
        Variant("compile", "float32", compile_unet=True),
    )
}


def load_variant(model: str, variant: Variant, device: str = "cpu") -> tuple[ModelBundle, bool]:
    """The bundle of ``model`` as ``variant``; and whether float16 was forced on a CPU (cast after a
    float32 load, which ``load_bundle`` refuses to do)."""
    from diffedit.loading import load_bundle

    forced = variant.dtype == "float16" and torch.device(device).type == "cpu"
    bundle = load_bundle(model, device=device, dtype="float32" if forced else variant.dtype)
    if forced:
        for module in (bundle.unet, bundle.vae, bundle.text_encoder):
            module.to(torch.float16)
    bundle.optimize(channels_last=variant.channels_last, compile_unet=variant.compile_unet)
    return bundle, forced


def compiles(bundle: ModelBundle) -> int | None:
    """Graphs compiled so far by a compiled UNet; None when the UNet is not compiled."""
    return getattr(bundle.unet, "compiles", None)


def bootstrap_delta(
    a: Sequence[float], b: Sequence[float], *, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """Mean of the paired differences b - a and its percentile bootstrap interval (tasks resampled
    with replacement, ``resamples`` times, seeded). NaNs (a task without a figure) drop the pair."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired samples must have the same length, got {x.shape} and {y.shape}")
    d = (y - x)[~(np.isnan(x) | np.isnan(y))]
    if d.size == 0:
        return {"delta": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"delta": float(d.mean()), "low": float(low), "high": float(high), "n": int(d.size)}


def run_speed(
    bundles: dict[str, ModelBundle],
    rows: Sequence[BenchRow],
    params: EditParams,
    *,
    batch: int,
    max_batch: int,
    repeats: int,
    warmup: bool = True,
) -> dict[str, Any]:
    """Paired batches of every variant on the same rows (see the module docstring)."""
    names = list(bundles)
    timers = {n: ModelTimer(b) for n, b in bundles.items()}
    runners = {n: OursRunner(bundles[n], params, max_batch, timers[n], name=n) for n in names}
    out: dict[str, Any] = {n: {} for n in names}
    try:
        for n in names:
            before = compiles(bundles[n])
            t0 = time.perf_counter()
            if warmup:
                runners[n].run_batch(rows[:batch])
            out[n]["warmup_seconds"] = time.perf_counter() - t0
            out[n]["compiles_warmup"] = None if before is None else compiles(bundles[n]) - before
            runners[n] = OursRunner(bundles[n], params, max_batch, timers[n], name=n)  # fresh stats
        before_timed = {n: compiles(bundles[n]) for n in names}
        i = 0
        for _ in range(repeats):
            for r in runners.values():
                r.new_pass()
            for chunk in chunks(rows, batch):
                k = i % len(names)
                for n in names[k:] + names[:k]:
                    runners[n].run_batch(chunk)
                i += 1
    finally:
        for t in timers.values():
            t.close()
    ref = names[0]
    for n in names:
        s = runners[n].stats.summary()
        paired = [
            a / b
            for a, b in zip(runners[ref].stats.batch_seconds, runners[n].stats.batch_seconds, strict=True)
        ]
        c = compiles(bundles[n])
        out[n].update(
            {
                "edits_per_s": s["edits_per_s"],
                "seconds_per_edit": s["seconds_per_edit"],
                "unet_ms_per_sample": s["unet_ms_per_sample"],
                "unet_evals_per_edit": s["unet_evals_per_edit"],
                "speed_ratio_paired_median": float(np.median(paired)),
                "speed_ratio_paired": paired,
                "compiles_timed": None if c is None else c - before_timed[n],
                "compiles_total": c,
            }
        )
    return out


def run_quality(
    bundles: dict[str, ModelBundle],
    *,
    tasks: int,
    steps: int,
    ratio: float,
    max_batch: int,
    seed: int = 0,
    log: Any = print,
) -> dict[str, Any]:
    """The quality benchmark's tasks and scoring, ours per variant; deltas against the first variant."""
    from benchmarks.quality.methods import run_ours
    from benchmarks.quality.scoring import score_run
    from diffedit.editor import DiffEditor
    from diffedit.shapes.scenes import make_edit_tasks

    task_list = make_edit_tasks(seed, tasks, size=64)
    records: dict[str, list[dict[str, Any]]] = {}
    out: dict[str, Any] = {}
    for name, bundle in bundles.items():
        t0 = time.perf_counter()
        run, _ = run_ours(
            DiffEditor(bundle, max_batch=max_batch, trajectory_cache=0), task_list, ratio, steps, "diffedit"
        )
        records[name] = score_run(run, task_list)
        success = [r["success"] for r in records[name]]
        psnr = [r["bg_psnr"] for r in records[name]]
        out[name] = {
            "tasks": len(task_list),
            "seconds": time.perf_counter() - t0,
            "success": float(np.mean(success)),
            "bg_psnr": float(np.nanmean(psnr)),
        }
        log(f"  quality {name:<24} success {out[name]['success']:.3f}  bg PSNR {out[name]['bg_psnr']:.2f} dB")
    ref = next(iter(bundles))
    for name in bundles:
        ds = bootstrap_delta([r["success"] for r in records[ref]], [r["success"] for r in records[name]])
        dp = bootstrap_delta([r["bg_psnr"] for r in records[ref]], [r["bg_psnr"] for r in records[name]])
        out[name]["success_delta"] = ds
        out[name]["bg_psnr_delta"] = dp
        out[name]["holds"] = ds["low"] >= -SUCCESS_MARGIN and dp["low"] >= -PSNR_MARGIN_DB
        out[name]["same_edits"] = sum(  # tasks the strict judge gives the same two verdicts
            a["success"] == b["success"] and a["clean_success"] == b["clean_success"]
            for a, b in zip(records[ref], records[name], strict=True)
        )
    return out


def run_precision(
    model: str,
    rows: Sequence[BenchRow],
    params: EditParams,
    *,
    variants: Sequence[str],
    quality_variants: Sequence[str],
    batch: int,
    max_batch: int,
    repeats: int,
    quality_tasks: int,
    quality_steps: int,
    quality_ratio: float,
    warmup: bool = True,
) -> dict[str, Any]:
    """Speed of ``variants`` and quality of ``quality_variants`` (both lists start with float32)."""
    unknown = sorted((set(variants) | set(quality_variants)) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    for names in (variants, quality_variants):
        if names and names[0] != "float32":
            raise ValueError(f"the first variant is the reference and must be float32, got {names[0]!r}")
    bundles: dict[str, ModelBundle] = {}
    forced: dict[str, bool] = {}
    for name in dict.fromkeys([*variants, *quality_variants]):
        bundles[name], forced[name] = load_variant(model, VARIANTS[name])
    out: dict[str, Any] = {
        "model": model,
        "variants": {n: vars(VARIANTS[n]) | {"forced_on_cpu": forced[n]} for n in bundles},
        "rows": len(rows),
        "batch": batch,
        "max_batch": max_batch,
        "repeats": repeats,
        "params": params.to_dict(),
        "margins": {"success": SUCCESS_MARGIN, "bg_psnr_db": PSNR_MARGIN_DB},
        "cpu_flags": cpu_flags(),
    }
    if variants:
        out["speed"] = run_speed(
            {n: bundles[n] for n in variants},
            rows,
            params,
            batch=batch,
            max_batch=max_batch,
            repeats=repeats,
            warmup=warmup,
        )
    if quality_variants and quality_tasks > 0:
        out["quality"] = run_quality(
            {n: bundles[n] for n in quality_variants},
            tasks=quality_tasks,
            steps=quality_steps,
            ratio=quality_ratio,
            max_batch=max_batch,
        )
        out["quality_settings"] = {"tasks": quality_tasks, "steps": quality_steps, "ratio": quality_ratio}
    return out


def cpu_flags() -> list[str]:
    """The CPU's bfloat16/float16/matrix flags from /proc/cpuinfo (what bf16 speed depends on)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if "bf16" in f or "fp16" in f or f.startswith("amx"))
    except OSError:
        pass
    return []


def format_precision(p: dict[str, Any]) -> str:
    """The printed table: one row per variant, speed and quality against float32."""
    from benchmarks.perf.report import _table

    speed, quality = p.get("speed") or {}, p.get("quality") or {}
    names = list(dict.fromkeys([*speed, *quality]))
    rows = []
    for n in names:
        s, q = speed.get(n, {}), quality.get(n, {})
        ds, dp = q.get("success_delta") or {}, q.get("bg_psnr_delta") or {}
        comp = "-" if s.get("compiles_timed") is None else f"{s['compiles_warmup']}/{s['compiles_timed']}"
        rows.append([
            n + (" (forced)" if (p.get("variants") or {}).get(n, {}).get("forced_on_cpu") else ""),
            s.get("edits_per_s"),
            s.get("speed_ratio_paired_median"),
            s.get("unet_ms_per_sample"),
            comp,
            q.get("success"),
            f"{ds['delta']:+.3f} [{ds['low']:+.3f}, {ds['high']:+.3f}]" if ds else "-",
            q.get("bg_psnr"),
            f"{dp['delta']:+.2f} [{dp['low']:+.2f}, {dp['high']:+.2f}]" if dp else "-",
            {True: "yes", False: "NO", None: "-"}[q.get("holds")],
        ])  # fmt: skip
    qs = p.get("quality_settings") or {}
    head = (
        f"\n== precision and compile: {p.get('model')} | speed: {p.get('rows')} rows x {p.get('repeats')} passes, "
        f"batch {p.get('batch')}, {p['params']['num_inference_steps']} steps | quality: {qs.get('tasks', '-')} tasks, "
        f"{qs.get('steps', '-')} steps, r={qs.get('ratio', '-')} | CPU flags {', '.join(p.get('cpu_flags') or []) or '-'} =="
    )
    table = _table(
        ["variant", "edits/s", "x float32 (paired median)", "UNet ms/sample", "graphs warm-up/timed",
         "success", "d success [95% CI]", "bg PSNR dB", "d PSNR dB [95% CI]", "holds"],
        rows,
    )  # fmt: skip
    m = p.get("margins") or {}
    note = (
        f"holds: the 95 % paired-bootstrap interval's lower bound above -{m.get('success')} success and "
        f"-{m.get('bg_psnr_db')} dB background PSNR (non-inferiority margins)"
    )
    return "\n".join([head, table, note])

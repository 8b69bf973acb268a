"""Section ``archs``: the real architectures (SD 1.5, SD 2.1, SDXL at full width, random weights from
the published configs: ``benchmarks.perf.fullsize``) edit end to end here, through ``DiffEditor`` and
through the Ray job, at a small resolution.

Per architecture, three child processes, one after the other (so that no two copies of a model are
ever resident and each peak is its own):

1. ``build``: the random-weight model written as a diffusers directory under ``workdir`` (reused when
   a finished one with the same architecture, dtype, size and seed is there);
2. ``edit``: ``load_bundle`` + ``DiffEditor.edit`` of one held-out shapes task at ``size`` pixels,
   ``steps`` DDIM steps and ``draws`` mask draws, with ``ModelTimer`` hooks: seconds per UNet
   evaluation (UNet seconds / samples evaluated, at ``size``), UNet evaluations per edit (counted by
   the hook), text-encoder prompts; its peak RSS (``ru_maxrss``: load + edit) is the memory figure;
3. ``ray``: ``pipeline.job.run_job`` over a one-row manifest of the same task, on a local Ray started
   by that process; rows written and the job's seconds.

In this process, on the meta device (no memory): parameters per module and the FLOPs of one UNet
evaluation, one VAE encode, one VAE decode and one text-encoder pass at the architecture's native
resolution, batch 1, 77 tokens, counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls,
convolutions and attention; 2 FLOPs per multiply-add; norms and pointwise ops not counted).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.perf.fullsize import ARCHS, arch_config, build_modules, count_parameters, save_fullsize

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def count_flops(name: str, size: int | None = None) -> dict[str, Any]:
    """Parameters and FLOPs per call at ``size`` pixels (default: the native resolution; see the
    module docstring), on meta."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = arch_config(name)
    mods = build_modules(name, device="meta")
    size = int(size or cfg["native_size"])
    stride = 2 ** (len(cfg["vae"]["block_out_channels"]) - 1)
    latent = size // stride
    meta = torch.device("meta")
    tokens = torch.zeros(1, 77, dtype=torch.long, device=meta)
    flops: dict[str, int] = {}
    with torch.no_grad():
        hidden = []
        for key in ("text_encoder", "text_encoder_2"):
            if key in mods:
                with FlopCounterMode(display=False) as fc:
                    out = mods[key](tokens, output_hidden_states=True)
                flops[key] = fc.get_total_flops()
                # SDXL reads both encoders' penultimate layer; SD the (only) encoder's last
                hidden.append(out.hidden_states[-2] if "text_encoder_2" in mods else out[0])
        context = torch.cat(hidden, dim=-1)  # (1, 77, cross_attention_dim)
        kwargs: dict[str, Any] = {}
        if cfg["unet"].get("addition_embed_type") == "text_time":
            pooled = cfg["text_encoder_2"]["projection_dim"]
            kwargs["added_cond_kwargs"] = {
                "text_embeds": torch.zeros(1, pooled, device=meta),
                "time_ids": torch.zeros(1, 6, device=meta),
            }
        with FlopCounterMode(display=False) as fc:
            mods["unet"](torch.zeros(1, 4, latent, latent, device=meta), torch.tensor([500], device=meta),
                         encoder_hidden_states=context, **kwargs)  # fmt: skip
        flops["unet"] = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            z = mods["vae"].encode(torch.zeros(1, 3, size, size, device=meta)).latent_dist.mode()
        flops["vae_encode"] = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            mods["vae"].decode(z)
        flops["vae_decode"] = fc.get_total_flops()
    return {"native_size": size, "parameters": count_parameters(mods), "flops": flops}


def flops_per_edit(flops: dict[str, int], unet_evals: float, vae_encodes: float = 1, vae_decodes: float = 1,
                   prompts: float = 2) -> float:  # fmt: skip
    """FLOPs of one edit: UNet evaluations, VAE encodes/decodes and text-encoder passes (all text
    encoders) per edit, times the FLOPs of each call."""
    text = sum(v for k, v in flops.items() if k.startswith("text_encoder"))
    return (unet_evals * flops["unet"] + vae_encodes * flops["vae_encode"] + vae_decodes * flops["vae_decode"]
            + prompts * text)  # fmt: skip


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _task(size: int) -> Any:
    from diffedit.shapes.scenes import make_edit_tasks

    return make_edit_tasks(0, 1, size=size)[0]


def _params(steps: int, draws: int) -> Any:
    from diffedit.params import EditParams

    return EditParams(num_inference_steps=steps, num_mask_draws=draws)


class _UNetCPUTime:
    """CPU seconds (``time.process_time``) spent inside the UNet's forward calls, through hooks: on a
    machine shared with other jobs the wall clock measures the share of the CPU this process got,
    the CPU time (one torch thread) the work."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.seconds = 0.0
        self._t0 = 0.0
        self._handles = [
            unet.register_forward_pre_hook(lambda *_: self._start()),
            unet.register_forward_hook(lambda *_: self._stop()),
        ]

    def _start(self) -> None:
        self._t0 = time.process_time()

    def _stop(self) -> None:
        self.seconds += time.process_time() - self._t0

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def step_build(name: str, path: Path, dtype: str, size: int, seed: int = 0) -> dict[str, Any]:
    """Child 1: write the model directory (skipped when a finished one is there)."""
    marker = path / "fullsize.json"
    want = {"arch": name, "dtype": dtype, "size": size, "seed": seed}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return {"built": False, "seconds": 0.0}
    t0 = time.perf_counter()
    save_fullsize(name, path, dtype=_DTYPES[dtype], seed=seed, size=size)
    marker.write_text(json.dumps(want) + "\n")
    return {"built": True, "seconds": time.perf_counter() - t0, "peak_rss_bytes": _peak_rss_bytes()}


def step_edit(path: Path, dtype: str, size: int, steps: int, draws: int) -> dict[str, Any]:
    """Child 2: load, one edit through DiffEditor with hooks; figures and the process's peak RSS."""
    import numpy as np

    from benchmarks.perf.timing import ModelTimer
    from diffedit.editor import DiffEditor, EditRequest
    from diffedit.loading import load_bundle

    t0 = time.perf_counter()
    bundle = load_bundle(str(path), dtype=dtype)
    load_seconds = time.perf_counter() - t0
    rss_loaded = _peak_rss_bytes()
    task = _task(size)
    editor = DiffEditor(
        bundle, _params(steps, draws), max_batch=16, trajectory_cache=0
    )  # timed repeats: no cache
    request = EditRequest(
        task.image.convert("RGB"), task.query, task.caption, seed=int(task.seed), id=task.id
    )
    cpu = _UNetCPUTime(bundle.unet)
    load0 = os.getloadavg()[0]
    with ModelTimer(bundle) as timer:
        t0, c0 = time.perf_counter(), time.process_time()
        (result,) = editor.edit([request])
        edit_seconds, edit_cpu = time.perf_counter() - t0, time.process_time() - c0
        snap = timer.snapshot()
    cpu.close()
    image = np.asarray(result.image)
    return {
        "native_size_here": bundle.native_size,
        "dtype": str(bundle.dtype).removeprefix("torch."),
        "load_seconds": load_seconds,
        "edit_seconds": edit_seconds,
        "unet_evals_per_edit": int(snap["unet_n"]),
        "unet_calls": int(snap["unet_calls"]),
        "unet_evals_editor_counter": int(result.counters["unet_evals"]),
        "seconds_per_unet_eval": snap["unet_s"] / snap["unet_n"] if snap["unet_n"] else None,
        "cpu_seconds_per_unet_eval": cpu.seconds / snap["unet_n"] if snap["unet_n"] else None,
        "edit_cpu_seconds": edit_cpu,
        "load_average": [load0, os.getloadavg()[0]],
        "unet_seconds": snap["unet_s"],
        "vae_encode_seconds": snap["vae_encode_s"],
        "vae_decode_seconds": snap["vae_decode_s"],
        "text_prompts": int(snap["text_n"]),
        "text_seconds": snap["text_s"],
        "image_size": list(result.image.size),
        "image_finite_nonconstant": bool(np.isfinite(image).all() and image.std() > 0),
        "peak_rss_after_load_bytes": rss_loaded,
        "peak_rss_bytes": _peak_rss_bytes(),
    }


def step_ray(
    path: Path, dtype: str, size: int, steps: int, draws: int, workdir: Path, threads: int
) -> dict[str, Any]:
    """Child 3: the batch job over a one-row manifest of the same task, on a local Ray."""
    import ray

    from benchmarks.perf.ray_section import _ray_job_data, start_local_ray, write_job_manifest
    from benchmarks.perf.rows import encode_png
    from pipeline.config import build_job
    from pipeline.job import run_job

    task = _task(size)
    manifest_dir, output = workdir / "manifest", workdir / "output"
    row = {"id": task.id, "image_bytes": encode_png(task.image.convert("RGB")), "caption": task.caption,
           "query": task.query, "seed": int(task.seed)}  # fmt: skip
    manifest = write_job_manifest([row], manifest_dir)
    data = _ray_job_data(Path(manifest), output, str(path), _params(steps, draws), 1, 16, threads)
    data["compute"]["dtype"] = dtype
    job = build_job(data, source="benchmarks.perf.archs")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    for attempt in range(3):  # a local Ray's start-up times out on an overloaded machine: retry
        try:
            start_local_ray()
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    try:
        t0 = time.perf_counter()
        outcome = run_job(job, overwrite=True)
        seconds = time.perf_counter() - t0
    finally:
        ray.shutdown()
    summary = outcome.summary or {}
    return {
        "exit_code": int(outcome.exit_code),
        "message": outcome.message,
        "job_seconds": seconds,
        "rows_ok": (summary.get("output") or {}).get("ok"),
        "rows_failed": (summary.get("output") or {}).get("failed"),
        "peak_rss_driver_bytes": _peak_rss_bytes(),
    }


def run_archs(
    names: Sequence[str],
    *,
    size: int,
    steps: int,
    draws: int,
    dtype: str,
    threads: int,
    workdir: Path,
    ray: bool = True,
    keep: bool = True,
) -> dict[str, Any]:
    """Every architecture in ``names``, one child process per step (see the module docstring)."""
    out: dict[str, Any] = {"size": size, "steps": steps, "draws": draws, "threads": threads, "archs": {}}
    for name in names:
        if name not in ARCHS:
            raise ValueError(f"unknown architecture {name!r}: expected one of {list(ARCHS)}")
        d = pick_dtype(name, dtype)
        path = workdir / f"{name}-{d}-{size}"
        fig: dict[str, Any] = {"dtype": d, "model_dir": str(path), **count_flops(name)}
        fig["unet_flops_here"] = count_flops(name, size)["flops"]["unet"]  # at the size the edit runs
        common = ["--path", str(path), "--dtype", d, "--size", str(size)]
        run = [*common, "--steps", str(steps), "--draws", str(draws)]
        steps_argv = {"build": common, "edit": run}
        if ray:
            steps_argv["ray"] = [*run, "--workdir", str(workdir / f"{name}-job")]
        for step, argv in steps_argv.items():
            try:
                fig[step] = _child([step, name, *argv], threads)
            except RuntimeError as exc:  # recorded; the next architecture still runs
                fig[step] = {"error": str(exc)}
                if step == "build":
                    break
        if not keep:
            shutil.rmtree(path, ignore_errors=True)
        out["archs"][name] = fig
    return out


def pick_dtype(name: str, dtype: str) -> str:
    """``auto``: bfloat16 (half the memory of float32 on a shared 24 GiB machine; SDXL's 2.6 B UNet
    in float32 alone is 10.3 GB), else the named one."""
    if dtype == "auto":
        return "bfloat16"
    if dtype not in _DTYPES:
        raise ValueError(f"archs dtype must be auto, float32 or bfloat16, got {dtype!r}")
    return dtype


def _child(argv: list[str], threads: int) -> dict[str, Any]:
    """``python -m benchmarks.perf.archs ARGV`` in a fresh process; its JSON result."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE")
    cmd = [sys.executable, "-m", "benchmarks.perf.archs", *argv, "--threads", str(threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:2])} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_seconds"] = wall
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.perf.archs", description="one step of one architecture"
    )
    p.add_argument("step", choices=["build", "edit", "ray", "flops"])
    p.add_argument("arch", choices=list(ARCHS))
    p.add_argument("--path", type=Path)
    p.add_argument("--dtype", default="bfloat16", choices=list(_DTYPES))
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--draws", type=int, default=2)
    p.add_argument("--workdir", type=Path)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from benchmarks.perf.cli import quiet_libraries

    quiet_libraries()
    if a.step == "build":
        result = step_build(a.arch, a.path, a.dtype, a.size)
    elif a.step == "edit":
        result = step_edit(a.path, a.dtype, a.size, a.steps, a.draws)
    elif a.step == "ray":
        result = step_ray(a.path, a.dtype, a.size, a.steps, a.draws, a.workdir, a.threads)
    else:
        result = count_flops(a.arch)
    gc.collect()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def format_archs(a: dict[str, Any]) -> str:
    """The printed table: one row per architecture."""
    from benchmarks.perf.report import _table

    gib, m, g = 2**30, 1e6, 1e9
    rows = []
    for name, f in a["archs"].items():
        p, fl, e, r = f["parameters"], f["flops"], f.get("edit") or {}, f.get("ray") or {}
        if "error" in e or not e:
            e = {k: None for k in ("peak_rss_bytes", "seconds_per_unet_eval", "cpu_seconds_per_unet_eval",
                                   "unet_evals_per_edit")}  # fmt: skip
        text = "+".join(f"{p[k] / m:.1f}" for k in ("text_encoder", "text_encoder_2") if k in p)
        cpu_s = e["cpu_seconds_per_unet_eval"]
        achieved = f"{f['unet_flops_here'] / cpu_s / g:.0f}" if cpu_s and "unet_flops_here" in f else "-"
        ray_ok = "failed" if "error" in r else f"{r.get('rows_ok')}/1" if r else "not run"
        rows.append([
            name, f["dtype"], f"{p['unet'] / m:.1f}", text, f"{p['vae'] / m:.1f}",
            f"{e['peak_rss_bytes'] / gib:.2f}" if e["peak_rss_bytes"] else "failed",
            e["seconds_per_unet_eval"], cpu_s, f"{fl['unet'] / g:,.0f}", f"{f['native_size']}", achieved,
            e["unet_evals_per_edit"], f"{flops_per_edit(fl, 140) / 1e12:.1f}", ray_ok,
        ])  # fmt: skip
    return "\n".join([
        f"\n== real architectures (random weights, published configs): edit at {a['size']} px, {a['steps']} DDIM "
        f"steps, {a['draws']} mask draws, {a['threads']} torch thread(s); FLOPs at native size ==",
        _table(
            ["arch", "dtype", "UNet M", "text M", "VAE M", "peak RSS GiB", "s/UNet eval (wall)",
             "s/UNet eval (CPU)", "GFLOPs/UNet eval", "native px", "GFLOP/s here (CPU)",
             "UNet evals/edit (counted)", "TFLOPs/edit at defaults", "Ray rows ok"],
            rows,
        ),
        "TFLOPs/edit at defaults: 140 UNet evaluations (counted at the defaults by the compare section) + 1 VAE "
        "encode + 1 VAE decode + 2 prompts through every text encoder, at native size.",
    ])  # fmt: skip

"""Section ``ray``: the batch job (``pipeline.job.run_job``) against the in-process editor on the same
rows."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.perf.compare import _ratio
from benchmarks.perf.methods import OursRunner
from benchmarks.perf.rows import BenchRow, chunks, decode_png, encode_png
from benchmarks.perf.timing import ModelTimer
from diffedit.params import EditParams


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


def write_job_manifest(records: Sequence[dict[str, Any]], manifest_dir: Path) -> str:
    """A fresh manifest folder of ``records`` (id, image_bytes, caption, query, seed); its file's path."""
    import pyarrow as pa

    from pipeline.config import StorageConfig
    from pipeline.prepare import write_manifest

    shutil.rmtree(manifest_dir, ignore_errors=True)
    schema = pa.schema(
        [("id", pa.string()), ("image_bytes", pa.binary()), ("caption", pa.string()),
         ("query", pa.string()), ("seed", pa.int64())]
    )  # fmt: skip
    return write_manifest(list(records), str(manifest_dir), StorageConfig(), schema)


def start_local_ray() -> None:
    """A local Ray of this machine's CPUs on loopback (the job's own ``ensure_ray`` does the same)."""
    import ray

    ray.init(
        num_cpus=os.cpu_count() or 1,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )


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
        from pipeline.config import build_job
        from pipeline.job import ExitCode, run_job
    except ImportError as exc:
        return {"status": "pending", "reason": f"the pipeline package is not importable: {exc}"}

    threads = torch.get_num_threads()
    kwargs = {"batch": batch, "max_batch": max_batch, "warmup": warmup}
    baselines = [in_process_baseline(model, rows, params, **kwargs)]
    cold_start = cold_start_seconds(model)

    workdir.mkdir(parents=True, exist_ok=True)
    manifest_dir, output = workdir / "manifest", workdir / "output"
    manifest = write_job_manifest(
        [
            {"id": r.id, "image_bytes": r.png, "caption": r.caption, "query": r.query, "seed": r.seed}
            for r in rows
        ],
        manifest_dir,
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
            start_local_ray()
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

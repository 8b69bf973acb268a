"""The command: arguments, section dispatch, the JSON report."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from benchmarks.perf.common import DEFAULT_SECTIONS, SCHEMA, SECTIONS
from benchmarks.perf.compare import run_compare
from benchmarks.perf.machine import machine_info
from benchmarks.perf.precision import run_precision
from benchmarks.perf.profiling import profile_ours
from benchmarks.perf.ray_section import run_ray
from benchmarks.perf.report import evaluate_targets, format_report
from benchmarks.perf.rows import make_rows
from benchmarks.perf.scaling import run_batch_scaling, run_size_scaling
from diffedit.params import EditParams


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.perf",
        description=sys.modules["benchmarks.perf"].__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="models/shapes-v3", help="model directory or URL (load_bundle)")
    p.add_argument(
        "--tiny", action="store_true", help="a tiny random model saved under the work folder (smoke test)"
    )
    p.add_argument("--out", default="out/perf.json", help="the JSON of every figure")
    p.add_argument(
        "--workdir", default=None, help="manifest and job output of the ray section (default: <out>_work)"
    )
    p.add_argument(
        "--sections",
        default=",".join(DEFAULT_SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)} (default {','.join(DEFAULT_SECTIONS)})",
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
    p.add_argument(
        "--variants",
        default="float32,bfloat16,float16,channels_last,bfloat16_channels_last,compile",
        help="precision section: variants timed (float32 first: the reference)",
    )
    p.add_argument(
        "--quality-variants",
        default="float32,bfloat16,channels_last,bfloat16_channels_last,compile",
        help="precision section: variants scored on the quality benchmark's tasks ('' = none)",
    )
    p.add_argument("--precision-rows", type=int, default=8, help="precision section: rows timed per pass")
    p.add_argument("--precision-batch", type=int, default=4, help="precision section: rows per batch")
    p.add_argument("--precision-repeats", type=int, default=3, help="precision section: passes")
    p.add_argument("--quality-tasks", type=int, default=200, help="precision section: quality tasks")
    p.add_argument("--quality-steps", type=int, default=50, help="precision section: quality DDIM steps")
    p.add_argument(
        "--quality-ratio", type=float, default=EditParams.encode_ratio, help="precision section: quality r"
    )
    p.add_argument(
        "--archs", default="sd15,sd21,sdxl", help="archs section: architectures (one process each)"
    )
    p.add_argument("--arch-size", type=int, default=128, help="archs section: image side of the edit here")
    p.add_argument("--arch-steps", type=int, default=4, help="archs section: DDIM steps of the edit here")
    p.add_argument("--arch-draws", type=int, default=2, help="archs section: mask draws of the edit here")
    p.add_argument("--arch-dtype", default="auto", help="archs section: dtype (auto: see archs.pick_dtype)")
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
    if "precision" in sections:
        bundle = None
        rows = make_rows(args.precision_rows, args.seed, args.size)
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        quality_variants = [v.strip() for v in args.quality_variants.split(",") if v.strip()]
        section(
            "precision",
            lambda: run_precision(
                model,
                rows,
                params,
                variants=variants,
                quality_variants=quality_variants,
                batch=args.precision_batch,
                max_batch=args.max_batch,
                repeats=args.precision_repeats,
                quality_tasks=args.quality_tasks,
                quality_steps=args.quality_steps,
                quality_ratio=args.quality_ratio,
                warmup=warmup,
            ),
        )
    if "archs" in sections:
        from benchmarks.perf.archs import (
            run_archs,  # here: ``python -m benchmarks.perf.archs`` runs its steps
        )

        bundle = None
        section(
            "archs",
            lambda: run_archs(
                [a.strip() for a in args.archs.split(",") if a.strip()],
                size=args.arch_size,
                steps=args.arch_steps,
                draws=args.arch_draws,
                dtype=args.arch_dtype,
                threads=args.threads or torch.get_num_threads(),
                workdir=workdir / "archs",
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

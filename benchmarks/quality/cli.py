"""Quality benchmark of DiffEdit on held-out edit tasks of the synthetic shapes world.

    python -m benchmarks.quality --model models/shapes-v3 --tasks 200 --ratios 0.5 0.7 0.9 --out out/quality

Every method edits the same tasks (``diffedit.shapes.scenes.make_edit_tasks``: scene seeds
>= 1_000_000_000, never used in training) with the same per-task seed (the task's scene seed), at
each encoding ratio r:

* ``diffedit``          ours (``DiffEditor``) at its defaults: mask, DDIM encode to r, masked decode;
* ``diffedit_paper``    ours with the paper's mask recipe (``params.PAPER_MASK``: threshold 0.5);
* ``diffedit_empty_ref`` the paper's RQ5 ablation: the paper's recipe with the empty prompt as the
                        mask's reference text (at the contact ratio only: r does not touch the mask);
* ``diffedit_paste``    the same edits with ``paste_background`` (the input's own pixels outside the
                        mask); derived from ``diffedit``'s output, no extra UNet evaluations;
* ``diffedit_gt_mask``  ours with the ground-truth region as the mask (upper bound of the mask step);
* ``diffedit_no_mask``  ours with an all-ones mask: DDIM encode and decode only;
* ``sdedit``            forward noising to r (``encode_method="noise"``), decode with the query, no mask;
* ``diffusers``         diffusers' deprecated ``StableDiffusionDiffEditPipeline`` at its defaults
                        (generate_mask(source=caption, target=query); invert(prompt=caption);
                        __call__(inpaint_strength=r)), one seeded generator per task;
* ``ledits``            diffusers' LEDITS++ (``benchmarks.quality.ledits``: settings and how they were
                        tuned), skip = 1 - r, one task per call; ``--peer-tasks`` limits it to the
                        first N tasks.

A forced 3-object recolour slice (``--three-object-tasks`` 40, stream ``--three-object-seed``
1000, ``THREE_OBJECT_METHODS`` at the contact ratio) is reported as ``slice`` =
``three_object_recolor``.

Two reference rows do not depend on r: ``vae_recon`` (decode(encode(x)), the ceiling of background
fidelity for any method that works in latent space) and ``target_render`` (the ground-truth edited
scene, rendered: the judge's accuracy on perfect edits).

Metrics per task (pure functions below), averaged per method and r:

* mask IoU: the method's binary mask at image resolution against the ground-truth region (the union
  of the object's old and new footprints), for methods that predict a mask; recolour and reshape
  tasks reported apart;
* background PSNR (dB, peak 255) and mean absolute error (0..255) over the pixels outside the region,
  edit against input;
* strict success and strict clean success: ``diffedit.shapes.judge`` (the edited object in the target
  colour covers its ground-truth footprint, in the target shape rather than another, without lumps,
  a halo or the old colour, with sharp edges; clean: every other object keeps its footprint over the
  whole image and the background gains no blob and keeps >= 22 dB; thresholds calibrated on edits
  labelled by eye, ``benchmarks.quality.calibration``); overall, by kind and by object count;
* edits per second (wall clock of the method's whole run over the tasks, batched, this machine) and
  UNet sample-evaluations per edit.

Cost (measured before issue 12 added four methods and the slice; with them, LEDITS++ at one task
per call dominates: expect about 45 min on an idle 2-core CPU): the sweep runs every method at ``--steps`` 25 DDIM steps (all alike; the paper's and
diffusers' default is 50), and ours once more at its default 50 steps at r = 0.7: that row is the
one the mask-IoU target is read from, and the contact sheet's. On a 2-core CPU, torch on one thread
and one process scoring finished runs beside it, 200 tasks x 3 ratios took 1179 s (20 min) on
models/shapes-v2 (1339 s on shapes-v1, machine shared with other jobs, load 3-5); at 50 steps for
every method it would take about twice as long. ``diffedit_gt_mask``'s IoU is that of the region dilated to the latent grid (what
it edits); ``meta.json`` also holds the IoU ceiling of a perfect latent-grid mask.

Writes ``results.csv`` (one row per method x r), ``tasks.csv`` (one row per task x method x r),
``tradeoff.png`` (edit success against background PSNR, one line per method across r),
``contact_sheet.png`` (input | soft mask | binary mask | edit for 12 tasks, ours at r = 0.7) and
``meta.json``, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.quality.ledits import LEDITS_SETTINGS, tiny_ledits_bundle
from benchmarks.quality.methods import (
    METHODS,
    ONE_RATIO_METHODS,
    THREE_OBJECT_METHODS,
    MethodOutput,
    MethodRun,
    Methods,
    run_target_render,
    run_vae_recon,
)
from benchmarks.quality.metrics import latent_grid_ceiling
from benchmarks.quality.report import contact_sheet, fmt, format_table, write_outputs
from benchmarks.quality.scoring import score_run, summarise
from diffedit.bundle import ModelBundle
from diffedit.params import PAPER_MASK, EditParams
from diffedit.shapes.scenes import EditTask, make_edit_tasks


def run_benchmark(
    bundle: ModelBundle,
    tasks: Sequence[EditTask],
    ratios: Sequence[float],
    methods: Sequence[str] = METHODS,
    steps: int = 25,
    max_batch: int = 64,
    out_dir: Path | None = None,
    contact_ratio: float = 0.7,
    default_steps: int | None = 50,
    score_workers: int = 1,
    log: Callable[[str], None] = print,
    base: EditParams | None = None,
    slice_name: str = "all",
    references: bool = True,
    peer_tasks: int | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run every method at every ratio on ``tasks`` with ``steps`` DDIM steps; return (summary rows,
    task records), labelled ``slice_name``.

    ``ONE_RATIO_METHODS`` run at ``contact_ratio`` only. ``base``: our parameters (mask options
    etc.; the defaults when None) for every variant of ours. With ``default_steps`` (and
    ``diffedit`` among ``methods``), ours also runs once at that many steps — its default, 50 — at
    r = ``contact_ratio``: the contact sheet's row. Skipped when it equals ``steps`` (the sweep holds
    it already). ``references``: also the ``vae_recon`` and ``target_render`` rows. ``peer_tasks``:
    LEDITS++ (one task per call, the slowest method) runs on the first that many tasks only.
    ``score_workers`` > 0 scores finished runs in that many worker processes while the model runs
    the next method (the strict judge costs about 15-40 ms a task); 0 scores in this process.
    With ``out_dir``, writes results.csv, tasks.csv, tradeoff.png and (when ``diffedit`` ran)
    contact_sheet.png there.
    """
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {list(METHODS)}")
    tasks = list(tasks)
    runner = Methods(bundle, max_batch=max_batch, base=base)
    runs: list[MethodRun] = []
    scored: list[Any] = []  # per run: a Future of its records, or the records
    pool = None
    if score_workers > 0:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(score_workers, mp_context=multiprocessing.get_context("spawn"))
    sheet: MethodRun | None = None

    def add(run: MethodRun, on: Sequence[EditTask] | None = None) -> None:
        on = tasks if on is None else on
        log(
            f"  ran {slice_name}: {run.method:<18} r={fmt(run.ratio, 2):<4} {run.steps:>2} steps "
            f"in {run.seconds:7.1f} s"
        )
        runs.append(run)
        light = MethodRun(  # the soft masks are not scored: leave them out of the pickle
            run.method,
            run.ratio,
            run.steps,
            [MethodOutput(o.image, o.mask_binary, None, o.unet_evals) for o in run.outputs],
            run.seconds,
            run.predicts_mask,
        )
        scored.append(
            pool.submit(score_run, light, on, slice_name) if pool else score_run(light, on, slice_name)
        )

    log(
        f"{slice_name}: {len(tasks)} tasks, ratios {list(ratios)}, methods {list(methods)}, {steps} steps, "
        f"max_batch {max_batch}"
    )
    if references:
        add(run_vae_recon(bundle, tasks, max_batch))
        add(run_target_render(tasks))
    for ratio in ratios:
        for method in methods:
            if method in ONE_RATIO_METHODS and ratio != contact_ratio:
                continue
            on = tasks[:peer_tasks] if method == "ledits" and peer_tasks else tasks
            run = runner.run(method, on, ratio, steps)
            add(run, on)
            if method == "diffedit" and (
                sheet is None or abs(ratio - contact_ratio) < abs(sheet.ratio - contact_ratio)
            ):
                sheet = run
    if default_steps and default_steps != steps and "diffedit" in methods:
        log(f"ours at its default {default_steps} steps, r={contact_ratio:g}:")
        sheet = runner.run("diffedit", tasks, contact_ratio, default_steps)
        add(sheet)
        if "diffedit_paste" in methods:
            add(runner.run("diffedit_paste", tasks, contact_ratio, default_steps))
    rows: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    sheet_records: list[dict[str, Any]] | None = None
    try:
        for run, pending in zip(runs, scored, strict=True):
            recs = pending.result() if pool else pending
            row = summarise(run, recs)
            row["slice"] = slice_name
            rows.append(row)
            records.extend(recs)
            if run is sheet:
                sheet_records = recs
            log(
                f"  {slice_name}: {run.method:<18} r={fmt(run.ratio, 2):<4} {run.steps:>2} steps  "
                f"success {row['success']:.3f}  clean {row['clean_success']:.3f}  "
                f"bg PSNR {row['bg_psnr']:.2f} dB  "
                f"IoU rec/resh {fmt(row['mask_iou_recolor'])}/{fmt(row['mask_iou_reshape'])}"
            )
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    if out_dir is not None:
        write_outputs(Path(out_dir), rows, records, steps)
        if sheet is not None:
            contact_sheet(tasks, sheet, Path(out_dir) / "contact_sheet.png", sheet_records)
    return rows, records


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.quality",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="models/shapes-v3", help="model directory or URL (load_bundle)")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="use a tiny random model instead (benchmarks.quality.ledits.tiny_ledits_bundle; smoke test, edits are noise)",
    )
    p.add_argument("--tasks", type=int, default=200, help="number of held-out edit tasks")
    p.add_argument("--seed", type=int, default=0, help="task stream (scene seeds 1e9 + seed * 1_000_003 + k)")
    p.add_argument("--kinds", nargs="+", default=["recolor", "reshape"], choices=["recolor", "reshape"])
    p.add_argument("--size", type=int, default=64, help="scene size in pixels")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.7, 0.9], help="encoding ratios r")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--steps", type=int, default=25, help="DDIM steps of the sweep, the same for every method")
    p.add_argument(
        "--default-steps",
        type=int,
        default=50,
        help="also run ours at this many steps (its default) at --contact-ratio; 0 = skip",
    )
    p.add_argument(
        "--max-batch", type=int, default=64, help="samples per UNet call (ours); tasks per batch (diffusers)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared 2-core machine 2 threads are 10-50x slower); 0 = torch's default",
    )
    p.add_argument(
        "--score-workers",
        type=int,
        default=1,
        help="processes scoring finished runs while the model runs the next; 0 = score inline",
    )
    p.add_argument("--contact-ratio", type=float, default=0.7, help="r of the contact sheet (ours)")
    p.add_argument(
        "--peer-tasks",
        type=int,
        default=0,
        help="LEDITS++ on the first this many tasks only (one task per call: the slowest method); 0 = all",
    )
    p.add_argument(
        "--three-object-tasks",
        type=int,
        default=40,
        help="size of the forced 3-object recolour slice (run at --contact-ratio); 0 = skip",
    )
    p.add_argument(
        "--three-object-seed", type=int, default=1000, help="task stream of the 3-object slice (held out)"
    )
    p.add_argument(
        "--three-object-methods",
        nargs="+",
        default=list(THREE_OBJECT_METHODS),
        choices=list(METHODS),
        help="methods of the 3-object slice",
    )
    p.add_argument(
        "--override",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="EditParams fields for every variant of ours (YAML values), e.g. mask_threshold=0.3",
    )
    p.add_argument("--out", default="out/quality", help="output directory")
    return p.parse_args(argv)


def parse_overrides(items: Sequence[str]) -> EditParams:
    """``KEY=VALUE`` strings (values read as YAML scalars) -> EditParams over the defaults."""
    import yaml

    values: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--override {item!r}: expected KEY=VALUE")
        values[key.strip()] = yaml.safe_load(value)
    return EditParams.from_dict(values, source="--override")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    wall0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        bundle, model = tiny_ledits_bundle(seed=0), "tiny-ledits:0"
    else:
        from diffedit.loading import load_bundle

        bundle, model = load_bundle(args.model), args.model
    base = parse_overrides(args.override)
    tasks = make_edit_tasks(args.seed, args.tasks, size=args.size, kinds=tuple(args.kinds))
    common = dict(
        steps=args.steps,
        max_batch=args.max_batch,
        contact_ratio=args.contact_ratio,
        score_workers=args.score_workers,
        base=base,
    )
    rows, records = run_benchmark(
        bundle,
        tasks,
        args.ratios,
        methods=args.methods,
        out_dir=out,
        default_steps=args.default_steps,
        peer_tasks=args.peer_tasks or None,
        **common,
    )
    three: list[EditTask] = []
    if args.three_object_tasks > 0:
        three = make_edit_tasks(
            args.three_object_seed, args.three_object_tasks, size=args.size, kinds=("recolor",), n_objects=3
        )
        rows3, records3 = run_benchmark(
            bundle,
            three,
            [args.contact_ratio],
            methods=args.three_object_methods,
            default_steps=None,
            slice_name="three_object_recolor",
            references=False,
            **common,
        )
        rows, records = rows + rows3, records + records3
        write_outputs(out, rows, records, args.steps)
    wall = time.perf_counter() - wall0
    ceiling = latent_grid_ceiling(tasks, bundle.vae_scale_factor)
    meta = {
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.quality", *sys.argv[1:]]),
        "model": model,
        "weights_sha256": getattr(bundle, "weights_hash", None),
        "tasks": len(tasks),
        "task_seed": args.seed,
        "scene_seeds": [int(tasks[0].seed), int(tasks[-1].seed)] if tasks else [],
        "three_object_tasks": len(three),
        "peer_tasks": args.peer_tasks or len(tasks),
        "ledits_settings": LEDITS_SETTINGS,
        "three_object_scene_seeds": [int(three[0].seed), int(three[-1].seed)] if three else [],
        "params_of_ours": base.to_dict(),
        "paper_mask": PAPER_MASK,
        "ratios": args.ratios,
        "methods": args.methods,
        "steps": args.steps,
        "default_steps": args.default_steps,
        "max_batch": args.max_batch,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.platform(),
        "mask_iou_latent_grid_ceiling": ceiling,
        "wall_seconds": wall,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print()
    print(format_table(rows))
    f = bundle.vae_scale_factor
    print(
        f"\nmask IoU ceiling of a perfect {f}x{f}-pixel latent-grid mask (majority rule): "
        + ", ".join(f"{k} {v:.3f}" for k, v in ceiling.items())
    )
    print(
        f"\nwall {wall:.0f} s; wrote {out}/results.csv, tasks.csv, tradeoff.png, contact_sheet.png, meta.json"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Mask study on ground truth: how mask construction options change mask IoU (no decoding).

    python -m benchmarks.quality.masks --model models/shapes-v3 --tasks 200 --seed 1 --out out/mask_study

For every task, the raw maps of step 1 are computed once with the editor's own inputs (the posterior
mode latent, the row's ``stage_generator(seed, "mask")`` draws, the mask timestep of ``--steps`` DDIM
steps): the contrast |eps_Q - eps_R| and the relevance maps |eps_Q - eps_0|, |eps_R - eps_0|
(``diffedit.mask.contrast_maps``; 3n UNet evaluations a task). Every option set of the grid is then
applied to the same raw maps with ``diffedit.mask.postprocess`` (pure: no model call), and its binary
mask, upsampled to the image by nearest neighbour, is scored against the task's ground-truth region
(``EditTask.region``: the union of the object's old and new footprints): IoU, precision, recall and
area, recolour and reshape apart.

The RQ5 ablation comes for free: the mask with the *empty* reference text is the contrast
|eps_Q - eps_0|, the query's relevance map (``reference: empty`` rows).

Success and background need full edits: ``benchmarks.quality`` runs a short list of option sets
(``--mask-variants``). Writes ``masks.csv`` (one row per option set) and prints the best rows.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffedit.bundle import ModelBundle
from diffedit.editor import stage_generator
from diffedit.images import pil_to_tensor
from diffedit.mask import ContrastMaps, contrast_maps, postprocess
from diffedit.params import PAPER_MASK, EditParams
from diffedit.schedule import mask_level
from diffedit.shapes.scenes import EditTask, make_edit_tasks

#: Options of the study grid (the ``EditParams`` field each sets).
GRID: dict[str, tuple[Any, ...]] = {
    "mask_threshold": (0.3, 0.4, 0.5),
    "mask_smoothing": (0.0, 1.0),
    "mask_clip_quantile": (0.99,),
    "mask_cover": ("difference", "union"),
    "mask_union_threshold": (0.3, 0.5),
    "mask_closing": (0, 1),
    "mask_fill_holes": (False, True),
    "mask_dilation": (0, 1),
}
#: One-at-a-time sweeps around the paper's recipe (the quantile and finer thresholds).
SWEEPS: dict[str, tuple[Any, ...]] = {
    "mask_clip_quantile": (0.9, 0.95, 0.99, 1.0),
    "mask_threshold": (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.75),
    "mask_smoothing": (0.0, 0.5, 1.0, 1.5),
}
OPTION_KEYS = tuple(k for k in PAPER_MASK if k not in ("num_mask_draws", "mask_strength"))
#: The short list that gets full edits (success, clean success, background), chosen from the IoU
#: grid on the tuning stream: the best IoU overall, the best without smoothing, the issue's simple
#: fix (threshold 0.3) and the step between it and the paper (0.4; the default since shapes-v3), a
#: dilated variant (recall over precision), and the union cover.
CANDIDATES: dict[str, dict[str, Any]] = {
    "paper": {},
    "t0.3": {"mask_threshold": 0.3},
    "t0.4": {"mask_threshold": 0.4},
    "s1_holes": {"mask_smoothing": 1.0, "mask_fill_holes": True},
    "s1_holes_dil1": {"mask_smoothing": 1.0, "mask_fill_holes": True, "mask_dilation": 1},
    "t0.4_close1_holes": {"mask_threshold": 0.4, "mask_closing": 1, "mask_fill_holes": True},
    "union_close1_holes": {"mask_cover": "union", "mask_closing": 1, "mask_fill_holes": True},
}


@torch.inference_mode()
def raw_maps(
    bundle: ModelBundle, tasks: Sequence[EditTask], params: EditParams, max_batch: int = 64, chunk: int = 32
) -> ContrastMaps:
    """The step-1 raw maps of every task (contrast and both relevance maps), with exactly the inputs
    ``DiffEditor`` gives ``diffedit_mask``.  # each (N, h, w)"""
    from diffedit.images import model_resolution

    levels = bundle.levels(params.num_inference_steps)
    k_mask = mask_level(levels, params.mask_strength)
    parts: list[ContrastMaps] = []
    for lo in range(0, len(tasks), chunk):
        group = list(tasks[lo : lo + chunk])
        for t in group:
            size = model_resolution(t.image.width, t.image.height, bundle.native_size, bundle.pixel_multiple)
            if size != t.image.size:
                raise ValueError(f"task {t.id}: the study needs images at the model's resolution")
        x0 = bundle.vae_encode(torch.stack([pil_to_tensor(t.image.convert("RGB")) for t in group]))
        B, C, h, w = x0.shape
        noises = [
            torch.randn((params.num_mask_draws, C, h, w), generator=stage_generator(int(t.seed), "mask"))
            for t in group
        ]
        emb = {p: e for p, e in zip(*_unique_embeddings(bundle, group), strict=True)}
        ts, alpha, sigma = levels.at(torch.full((B,), k_mask))  # (B,) each
        parts.append(
            contrast_maps(
                bundle.denoise,
                x0,
                noises,
                ts,
                alpha.to(x0.device),
                sigma.to(x0.device),
                torch.stack([emb[t.query] for t in group]),
                torch.stack([emb[t.caption] for t in group]),
                max_batch=max_batch,
                emb_empty=torch.stack([emb[""]] * B),
                relevance=torch.ones(B, dtype=torch.bool),
            )
        )
    return ContrastMaps(
        *(torch.cat([getattr(p, f) for p in parts]) for f in ContrastMaps.__dataclass_fields__)
    )


def _unique_embeddings(bundle: ModelBundle, tasks: Sequence[EditTask]) -> tuple[list[str], torch.Tensor]:
    prompts = list(dict.fromkeys([t.query for t in tasks] + [t.caption for t in tasks] + [""]))
    return prompts, bundle.encode_prompts(prompts)


def apply_options(maps: ContrastMaps, options: dict[str, Any], empty_reference: bool = False) -> torch.Tensor:
    """Binary masks of ``options`` (``EditParams`` mask fields) on the raw maps.  # (N, h, w) bool

    ``empty_reference``: the paper's RQ5 ablation, the empty prompt as the reference text R (the
    contrast is then the query's relevance map; the union cover is undefined there and refused)."""
    n = maps.difference.shape[0]

    def col(key: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.full((n,), options[key], dtype=dtype)

    if empty_reference:
        if options["mask_cover"] == "union":
            raise ValueError("the union cover needs a reference text")
        zero = torch.zeros_like(maps.difference)
        maps = ContrastMaps(maps.relevance_query, zero, zero)
    out = postprocess(
        maps,
        clip_quantile=col("mask_clip_quantile"),
        smoothing=col("mask_smoothing"),
        threshold=col("mask_threshold"),
        union=torch.full((n,), options["mask_cover"] == "union"),
        union_threshold=col("mask_union_threshold"),
        closing=col("mask_closing", torch.int64),
        holes=torch.full((n,), bool(options["mask_fill_holes"])),
        dilation=col("mask_dilation", torch.int64),
    )
    return out.binary


def score_masks(binary: torch.Tensor, tasks: Sequence[EditTask]) -> dict[str, float]:
    """Mean IoU, precision, recall and area fraction of latent masks against the tasks' regions,
    overall and per kind."""
    recs: list[dict[str, Any]] = []
    for b, t in zip(binary.cpu().numpy(), tasks, strict=True):
        f = t.region.shape[0] // b.shape[0]
        m = np.kron(b, np.ones((f, f), dtype=bool))  # (H, W) nearest-neighbour upsampling
        r = t.region
        inter, union = int((m & r).sum()), int((m | r).sum())
        recs.append(
            {
                "kind": t.kind,
                "iou": 1.0 if union == 0 else inter / union,
                "precision": inter / m.sum() if m.any() else 0.0,
                "recall": inter / r.sum(),
                "area": float(m.mean()),
            }
        )
    out: dict[str, float] = {}
    for kind in (None, "recolor", "reshape"):
        sel = [r for r in recs if kind is None or r["kind"] == kind]
        suffix = "" if kind is None else f"_{kind}"
        for key in ("iou", "precision", "recall", "area"):
            out[f"{key}{suffix}"] = float(np.mean([r[key] for r in sel])) if sel else float("nan")
    return out


def option_sets() -> list[dict[str, Any]]:
    """The grid and the one-at-a-time sweeps, as full option dicts (paper values elsewhere), unique."""
    sets: list[dict[str, Any]] = []
    keys = list(GRID)
    for values in itertools.product(*(GRID[k] for k in keys)):
        opt = {**PAPER_MASK, **dict(zip(keys, values, strict=True))}
        if (
            opt["mask_cover"] == "difference"
            and opt["mask_union_threshold"] != PAPER_MASK["mask_union_threshold"]
        ):
            continue  # the union threshold does nothing without the union cover
        sets.append(opt)
    for key, values in SWEEPS.items():
        sets.extend({**PAPER_MASK, key: v} for v in values)
    unique: dict[tuple, dict[str, Any]] = {}
    for opt in sets:
        unique.setdefault(tuple(opt[k] for k in OPTION_KEYS), opt)
    return list(unique.values())


def edit_candidates(
    bundle: ModelBundle,
    tasks: Sequence[EditTask],
    ratio: float,
    steps: int,
    names: Sequence[str],
    log: Any = print,
) -> list[dict[str, Any]]:
    """Full edits (``benchmarks.quality.methods.run_ours``, variant "diffedit") for each candidate of
    ``CANDIDATES``: its summary row (IoU, success, clean success, background PSNR, by kind)."""
    from benchmarks.quality.methods import run_ours
    from benchmarks.quality.scoring import score_run, summarise
    from diffedit.editor import DiffEditor

    editor = DiffEditor(bundle, max_batch=64)
    rows = []
    for name in names:
        base = EditParams().replace(**{**PAPER_MASK, **CANDIDATES[name]})
        run, _ = run_ours(editor, tasks, ratio, steps, "diffedit", base)
        row = {"candidate": name, **summarise(run, score_run(run, tasks, "tuning"))}
        log(
            f"{name:<20} success {row['success']:.3f} (rec {row['success_recolor']:.3f} resh "
            f"{row['success_reshape']:.3f})  clean {row['clean_success']:.3f}  bg {row['bg_psnr']:.2f} dB  "
            f"IoU {row['mask_iou_recolor']:.3f}/{row['mask_iou_reshape']:.3f}  {run.seconds:.0f} s"
        )
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality.masks", description=__doc__)
    p.add_argument("--model", default="models/shapes-v3")
    p.add_argument("--tasks", type=int, default=200)
    p.add_argument("--seed", type=int, default=1, help="task stream (the benchmark's held-out set is 0)")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps (they set the mask timestep)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="out/mask_study")
    p.add_argument(
        "--edit", nargs="*", choices=list(CANDIDATES), help="full edits of these candidates (no IoU grid)"
    )
    p.add_argument("--ratio", type=float, default=0.7, help="r of --edit")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from diffedit.loading import load_bundle

    bundle = load_bundle(args.model)
    tasks = make_edit_tasks(args.seed, args.tasks)
    if args.edit is not None:
        from benchmarks.quality.report import write_csv
        from benchmarks.quality.scoring import SUMMARY_COLUMNS

        rows = edit_candidates(bundle, tasks, args.ratio, args.steps, args.edit or list(CANDIDATES))
        write_csv(Path(args.out) / "candidates.csv", rows, ("candidate", *SUMMARY_COLUMNS))
        return 0
    params = EditParams(num_inference_steps=args.steps)
    t0 = time.perf_counter()
    maps = raw_maps(bundle, tasks, params)
    print(f"raw maps of {len(tasks)} tasks in {time.perf_counter() - t0:.0f} s")
    rows = []
    for opt in option_sets():
        rows.append(
            {
                "reference": "caption",
                **{k: opt[k] for k in OPTION_KEYS},
                **score_masks(apply_options(maps, opt), tasks),
            }
        )
    for thr in SWEEPS["mask_threshold"]:  # RQ5: the empty prompt as the reference text
        opt = {**PAPER_MASK, "mask_threshold": thr}
        rows.append(
            {
                "reference": "empty",
                **{k: opt[k] for k in OPTION_KEYS},
                **score_masks(apply_options(maps, opt, True), tasks),
            }
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "masks.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in r.items()})
    paper = rows[
        next(
            i
            for i, r in enumerate(rows)
            if r["reference"] == "caption" and all(r[k] == PAPER_MASK[k] for k in OPTION_KEYS)
        )
    ]
    print(
        "paper:", {k: round(v, 3) for k, v in paper.items() if isinstance(v, float) and k.startswith("iou")}
    )
    best = sorted(rows, key=lambda r: -r["iou"])[:15]
    for r in best:
        print(
            {
                k: (round(v, 3) if isinstance(v, float) else v)
                for k, v in r.items()
                if not k.startswith(("precision", "recall", "area_"))
            }
        )
    print(f"wrote {out / 'masks.csv'} ({len(rows)} option sets) in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

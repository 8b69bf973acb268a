"""Scoring of the quality benchmark: one record per task (the strict judge's verdicts and
measurements, mask IoU, background PSNR/MAE), and one summary row per method and r."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmarks.quality.methods import REFERENCES, MethodRun
from benchmarks.quality.metrics import background_mae, background_psnr, mask_iou, mean_of
from diffedit.shapes.judge import judge
from diffedit.shapes.scenes import EditTask

SUMMARY_COLUMNS: tuple[str, ...] = (
    "slice",
    "method",
    "ratio",
    "steps",
    "n",
    "n_recolor",
    "n_reshape",
    "mask_iou",
    "mask_iou_recolor",
    "mask_iou_reshape",
    "bg_psnr",
    "bg_psnr_recolor",
    "bg_psnr_reshape",
    "bg_mae",
    "success",
    "success_recolor",
    "success_reshape",
    "clean_success",
    "clean_success_recolor",
    "clean_success_reshape",
    "n_1obj",
    "n_2obj",
    "n_3obj",
    "success_1obj",
    "success_2obj",
    "success_3obj",
    "clean_success_1obj",
    "clean_success_2obj",
    "clean_success_3obj",
    "edits_per_s",
    "unet_evals_per_edit",
    "seconds",
)
TASK_COLUMNS: tuple[str, ...] = (
    "slice",
    "method",
    "ratio",
    "task_id",
    "kind",
    "n_objects",
    "seed",
    "caption",
    "query",
    "target_colour",
    "target_shape",
    "success",
    "clean_success",
    "object_iou",
    "shape_margin",
    "old_colour",
    "others_iou",
    "blob_px",
    "reason",
    "mask_iou",
    "bg_psnr",
    "bg_mae",
    "unet_evals",
)


def score_run(run: MethodRun, tasks: Sequence[EditTask], slice_name: str = "all") -> list[dict[str, Any]]:
    """One record per task (``TASK_COLUMNS``): the strict judge's verdicts and measurements
    (``diffedit.shapes.judge``), the mask's IoU with the region, background PSNR/MAE outside it."""
    records = []
    for t, out in zip(tasks, run.outputs, strict=True):
        j = judge(t, out.image)
        iou = (
            mask_iou(out.mask_binary, t.region)
            if run.predicts_mask and out.mask_binary is not None
            else float("nan")
        )
        records.append(
            {
                "slice": slice_name,
                "method": run.method,
                "ratio": run.ratio,
                "task_id": t.id,
                "kind": t.kind,
                "n_objects": t.n_objects,
                "seed": t.seed,
                "caption": t.caption,
                "query": t.query,
                "target_colour": t.target_colour,
                "target_shape": t.target_shape,
                "success": float(j.success),
                "clean_success": float(j.clean),
                "object_iou": j.object_iou,
                "shape_margin": j.shape_margin,
                "old_colour": j.old_colour,
                "others_iou": j.others_iou,
                "blob_px": j.blob_px,
                "reason": j.reason,
                "mask_iou": iou,
                "bg_psnr": background_psnr(out.image, t.image, t.region),
                "bg_mae": background_mae(out.image, t.image, t.region),
                "unet_evals": out.unet_evals,
            }
        )
    return records


def summarise(run: MethodRun, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One ``results.csv`` row from a run's task records."""

    def of(kind: str | None, key: str) -> float:
        return mean_of([r[key] for r in records if kind is None or r["kind"] == kind])

    def by_count(k: int, key: str) -> float:
        return mean_of([r[key] for r in records if r.get("n_objects") == k])

    n = len(records)
    reference = run.method in REFERENCES
    return {
        "slice": records[0].get("slice", "all") if records else "all",
        "method": run.method,
        "ratio": run.ratio,
        "steps": run.steps,
        "n": n,
        "n_recolor": sum(r["kind"] == "recolor" for r in records),
        "n_reshape": sum(r["kind"] == "reshape" for r in records),
        "mask_iou": of(None, "mask_iou"),
        "mask_iou_recolor": of("recolor", "mask_iou"),
        "mask_iou_reshape": of("reshape", "mask_iou"),
        "bg_psnr": of(None, "bg_psnr"),
        "bg_psnr_recolor": of("recolor", "bg_psnr"),
        "bg_psnr_reshape": of("reshape", "bg_psnr"),
        "bg_mae": of(None, "bg_mae"),
        "success": of(None, "success"),
        "success_recolor": of("recolor", "success"),
        "success_reshape": of("reshape", "success"),
        "clean_success": of(None, "clean_success"),
        "clean_success_recolor": of("recolor", "clean_success"),
        "clean_success_reshape": of("reshape", "clean_success"),
        **{f"n_{k}obj": sum(r.get("n_objects") == k for r in records) for k in (1, 2, 3)},
        **{f"success_{k}obj": by_count(k, "success") for k in (1, 2, 3)},
        **{f"clean_success_{k}obj": by_count(k, "clean_success") for k in (1, 2, 3)},
        "edits_per_s": float("nan") if reference or run.seconds <= 0 else n / run.seconds,
        "unet_evals_per_edit": of(None, "unet_evals"),
        "seconds": run.seconds,
    }

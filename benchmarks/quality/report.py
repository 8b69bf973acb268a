"""What the quality benchmark writes: CSV files, the text table, the trade-off plot and the contact
sheet."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.quality.methods import METHODS, MethodRun
from benchmarks.quality.scoring import SUMMARY_COLUMNS, TASK_COLUMNS
from diffedit.shapes.scenes import EditTask


def fmt(v: Any, digits: int = 3) -> str:
    """A value for a table or CSV cell: floats to ``digits`` places, NaN as an empty cell."""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """``rows`` as CSV with ``columns``; NaN written as an empty cell."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: fmt(row.get(k, ""), 4) for k in columns})


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A fixed-width text table of the summary rows."""
    cols = [
        ("slice", "slice", 0),
        ("method", "method", 0),
        ("ratio", "r", 1),
        ("steps", "steps", 0),
        ("n", "n", 0),
        ("mask_iou_recolor", "IoU rec", 3),
        ("mask_iou_reshape", "IoU resh", 3),
        ("bg_psnr", "bgPSNR", 2),
        ("bg_mae", "bgMAE", 2),
        ("success", "success", 3),
        ("success_recolor", "succ rec", 3),
        ("success_reshape", "succ resh", 3),
        ("clean_success", "clean", 3),
        ("success_1obj", "succ 1obj", 3),
        ("success_2obj", "succ 2obj", 3),
        ("success_3obj", "succ 3obj", 3),
        ("edits_per_s", "edits/s", 2),
        ("unet_evals_per_edit", "UNet/edit", 0),
    ]
    cells = [[h for _, h, _ in cols]]
    for row in rows:
        cells.append(
            [
                fmt(row.get(k, ""), d) if isinstance(row.get(k), float) else str(row.get(k, ""))
                for k, _, d in cols
            ]
        )
    widths = [max(len(r[i]) for r in cells) for i in range(len(cols))]
    lines = []
    for j, r in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_tradeoff(rows: Sequence[dict[str, Any]], path: Path, steps: int | None = None) -> None:
    """Edit success (left) and clean success (right) against background PSNR, one line per method
    across r (the paper's trade-off plot) over the rows run at ``steps`` DDIM steps (None: the most
    common count); rows at other step counts as separate stars; the VAE reconstruction's background
    PSNR as a vertical line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edits = [r for r in rows if r["method"] in METHODS]
    if steps is None and edits:
        counts = [r["steps"] for r in edits]
        steps = max(set(counts), key=counts.count)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), dpi=110, sharey=True)
    for ax, key, name in zip(
        axes, ("success", "clean_success"), ("edit success", "clean success (others kept too)"), strict=True
    ):
        for method in METHODS:
            pts = sorted(
                (r for r in edits if r["method"] == method and r["steps"] == steps), key=lambda r: r["ratio"]
            )
            if not pts:
                continue
            xs, ys = [p["bg_psnr"] for p in pts], [p[key] for p in pts]
            (line,) = ax.plot(xs, ys, marker="o", label=f"{method} ({steps} steps)")
            for extra in (r for r in edits if r["method"] == method and r["steps"] != steps):
                ax.plot(
                    extra["bg_psnr"],
                    extra[key],
                    marker="*",
                    markersize=12,
                    color=line.get_color(),
                    linestyle="none",
                    label=f"{method}, {extra['steps']} steps, r={extra['ratio']:g}",
                )
            for p in pts:
                ax.annotate(
                    f"r={p['ratio']:g}",
                    (p["bg_psnr"], p[key]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        for r in rows:
            if r["method"] == "vae_recon":
                ax.axvline(
                    r["bg_psnr"],
                    color="grey",
                    linestyle="--",
                    label=f"VAE reconstruction ({r['bg_psnr']:.1f} dB)",
                )
        ax.set_xlabel("background PSNR outside the edit region (dB, higher = better preserved)")
        ax.set_ylabel(f"{name} (strict judge)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(name)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle("DiffEdit trade-off on held-out shapes edits")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def contact_sheet(
    tasks: Sequence[EditTask],
    run: MethodRun,
    path: Path,
    records: Sequence[dict[str, Any]] | None = None,
    count: int = 12,
) -> None:
    """A grid of ``count`` tasks: input | soft mask | binary mask (ground-truth region outlined) | edit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(count, len(tasks))
    fig, axes = plt.subplots(n, 4, figsize=(8, 2.1 * n), dpi=100, squeeze=False)
    for i in range(n):
        t, out = tasks[i], run.outputs[i]
        blank = np.zeros((t.image.height, t.image.width), dtype=np.float32)
        soft = out.mask_soft if out.mask_soft is not None else blank
        binary = out.mask_binary if out.mask_binary is not None else blank.astype(bool)
        panels = [
            (np.asarray(t.image.convert("RGB")), None, "input"),
            (soft, "magma", "soft mask"),
            (binary.astype(np.float32), "gray", "binary mask"),
            (np.asarray(out.image), None, "edit"),
        ]
        for j, (img, cmap, title) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(img, cmap=cmap, vmin=0, vmax=1 if cmap else None, interpolation="nearest")
            if j == 2:
                ax.contour(t.region.astype(float), levels=[0.5], colors="lime", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=9)
        label = f"{t.kind}: {t.source_colour} {t.source_shape} -> {t.target_colour} {t.target_shape}"
        if records is not None:
            rec = records[i]
            label += f"\nIoU {rec['mask_iou']:.2f}  bg {rec['bg_psnr']:.1f} dB  {'OK' if rec['success'] else 'fail'}"
        axes[i, 0].set_ylabel(label, fontsize=6, rotation=0, ha="right", va="center")
    fig.suptitle(
        f"{run.method} at r={run.ratio:g}, {run.steps} steps (green: ground-truth region)", fontsize=9
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def write_outputs(
    out_dir: Path, rows: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]], steps: int
) -> None:
    """results.csv, tasks.csv and tradeoff.png (of the ``all`` slice) in ``out_dir``."""
    write_csv(out_dir / "results.csv", rows, SUMMARY_COLUMNS)
    write_csv(out_dir / "tasks.csv", records, TASK_COLUMNS)
    plot_tradeoff([r for r in rows if r.get("slice", "all") == "all"], out_dir / "tradeoff.png", steps)


def read_csv(path: Path) -> list[dict[str, Any]]:
    """A ``write_csv`` file back: numbers as floats (empty cells NaN), other cells as text."""
    out = []
    with Path(path).open(newline="") as f:
        for row in csv.DictReader(f):
            parsed: dict[str, Any] = {}
            for k, v in row.items():
                try:
                    parsed[k] = float(v) if v != "" else math.nan
                except ValueError:
                    parsed[k] = v
            out.append(parsed)
    return out


def markdown_tables(rows: Sequence[dict[str, Any]]) -> str:
    """The README's and the model card's tables from summary rows: every method of the ``all`` slice
    by r, then the ``three_object_recolor`` slice."""

    def f(v: Any, d: int = 3) -> str:
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"

    lines = [
        "| method | r | steps | strict success (recolour / reshape) | strict clean | success 1 / 2 / 3 objects "
        "| background PSNR (dB) | mask IoU recolour / reshape | UNet evals / edit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("slice", "all") != "all":
            continue
        lines.append(
            f"| {r['method']} | {f(r['ratio'], 1)} | {int(r['steps'])} | {f(r['success'])} "
            f"({f(r['success_recolor'], 2)} / {f(r['success_reshape'], 2)}) | {f(r['clean_success'])} | "
            f"{f(r['success_1obj'], 2)} / {f(r['success_2obj'], 2)} / {f(r['success_3obj'], 2)} | "
            f"{f(r['bg_psnr'], 2)} | {f(r['mask_iou_recolor'])} / {f(r['mask_iou_reshape'])} | "
            f"{f(r['unet_evals_per_edit'], 0)} |"
        )
    three = [r for r in rows if r.get("slice") == "three_object_recolor"]
    if three:
        lines += ["", "| forced 3-object recolours | r | strict success | strict clean | background PSNR (dB) | mask IoU |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for r in three:
            lines.append(
                f"| {r['method']} | {f(r['ratio'], 1)} | {f(r['success'])} | {f(r['clean_success'])} | "
                f"{f(r['bg_psnr'], 2)} | {f(r['mask_iou_recolor'])} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m benchmarks.quality.report out/quality/results.csv [more.csv ...]
    import sys

    print(markdown_tables([row for p in sys.argv[1:] for row in read_csv(Path(p))]))

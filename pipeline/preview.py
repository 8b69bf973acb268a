"""``diffedit-batch preview``: a PNG contact sheet (input | mask | edit) of some output rows, each with
its caption (R) and query (Q), its scores and filter verdict (``keep``, ``reject_reason``), and, for
rows of the shapes world, the strict judge's verdict (``diffedit.shapes.judge``: the row's id names a
held-out task whose ground truth is known). ``show`` picks all rows, the kept ones or the rejected ones."""

from __future__ import annotations

import io
import os
import textwrap
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from pipeline import output as O
from pipeline import rows as R
from pipeline.config import StorageConfig
from pipeline.storage import filesystem, read_parquet

PREVIEW_COLUMNS = [
    "id",
    "status",
    "error",
    "caption",
    "query",
    "input_image",
    "mask",
    "edited_image",
    "mask_area",
    "keep",
    "reject_reason",
    "candidate",
    *[f.name for f in R.SCORE_FIELDS],
]
SHOW = ("all", "kept", "rejected")


def read_rows(
    output: str, storage: StorageConfig, rows: int, include_failed: bool = True, show: str = "all"
) -> list[dict]:
    """Up to ``rows`` output rows (ok rows first, in part order), read with plain pyarrow; ``show``:
    every row, only kept rows, or only rejected ok rows (then no failed row)."""
    if show not in SHOW:
        raise ValueError(f"show must be one of {list(SHOW)}, got {show!r}")
    fs, path = filesystem(output, storage)
    parts = O.part_files(fs, path)
    if not parts:
        raise ValueError(f"no output parts in {output} (part-*.parquet)")
    ok: list[dict] = []
    failed: list[dict] = []
    for part in parts:
        table = read_parquet(fs, part, PREVIEW_COLUMNS)
        for row in table.to_pylist():
            if show == "kept" and not row["keep"]:
                continue
            if show == "rejected" and (row["keep"] or row["status"] != R.OK):
                continue
            (ok if row["status"] == R.OK else failed).append(row)
        if len(ok) >= rows:
            break
    chosen = ok[:rows]
    if include_failed and len(chosen) < rows:
        chosen += failed[: rows - len(chosen)]
    return sorted(chosen, key=lambda r: (r["status"] != R.OK, r["id"]))


@dataclass(frozen=True)
class Verdict:
    """The strict judge on one output row of the shapes world."""

    success: bool
    clean: bool
    reason: str  # the first failed check, "" when clean

    @property
    def text(self) -> str:
        if self.clean:
            return "judge: success, clean"
        return f"judge: {'success, not clean' if self.success else 'FAILED'} ({self.reason})"


def _image(value: dict | None) -> Image.Image | None:
    """An image column's picture: its bytes, or a stored reference (``output.input_image: reference``)
    to a local file; None for a remote reference or a null cell (drawn as an empty box)."""
    if value and value.get("bytes"):
        return Image.open(io.BytesIO(value["bytes"])).convert("RGB")
    if value and value.get("path") and os.path.isfile(value["path"]):
        return ImageOps.exif_transpose(Image.open(value["path"])).convert("RGB")  # the file as edited
    return None


def shapes_verdict(row: dict) -> Verdict | None:
    """The strict judge's verdict on an ok row whose id names a held-out shapes task
    (``scenes.task_from_id``) with the row's caption, query and input pixels; None for any other row."""
    from diffedit.shapes.judge import judge
    from diffedit.shapes.scenes import task_from_id

    source, edit = _image(row.get("input_image")), _image(row.get("edited_image"))
    if (
        row.get("status") != R.OK
        or source is None
        or edit is None
        or not str(row["id"]).startswith("shapes-")
    ):
        return None
    try:
        task = task_from_id(row["id"], size=source.height)
    except ValueError:
        return None
    same = (task.caption, task.query) == (row.get("caption") or "", row.get("query"))
    if not same or not np.array_equal(np.asarray(task.image.convert("RGB")), np.asarray(source)):
        return None
    verdict = judge(task, edit)
    return Verdict(verdict.success, verdict.clean, verdict.reason)


def contact_sheet(
    rows: list[dict], cell: int = 160, verdicts: list[Verdict | None] | None = None
) -> Image.Image:
    """A grid: one line per row, columns input | mask | edit, captioned with id, mask area, caption,
    query and the judge's verdict where there is one (or the error of a failed row)."""
    font = ImageFont.load_default(size=max(10, cell // 13))
    verdicts = verdicts or [None] * len(rows)
    label_h = cell // 2 + 4 * (max(10, cell // 13) + 2)
    header_h = cell // 6
    width, height = 3 * cell + 4 * 4, header_h + len(rows) * (cell + label_h + 4) + 4
    sheet = Image.new("RGB", (width, max(height, header_h + 8)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, title in enumerate(("input", "mask", "edit")):
        draw.text((4 + i * (cell + 4), 2), title, fill="black", font=font)
    y = header_h
    for row, verdict in zip(rows, verdicts, strict=True):
        for i, column in enumerate(("input_image", "mask", "edited_image")):
            x = 4 + i * (cell + 4)
            image = _image(row.get(column))
            if image is not None:
                image.thumbnail(
                    (cell, cell),
                    Image.Resampling.NEAREST if max(image.size) < cell else Image.Resampling.LANCZOS,
                )
                scale = cell / max(image.size)
                if scale > 1:
                    image = image.resize(
                        (round(image.width * scale), round(image.height * scale)), Image.Resampling.NEAREST
                    )
                sheet.paste(image, (x + (cell - image.width) // 2, y + (cell - image.height) // 2))
            else:
                draw.rectangle([x, y, x + cell - 1, y + cell - 1], outline="grey", fill=(240, 240, 240))
        if row["status"] == R.OK:
            text = (
                f"{row['id']}  mask {row['mask_area']:.0%}\nR: {row.get('caption') or ''}\nQ: {row['query']}"
            )
            scores = score_text(row)
            if scores:
                text += f"\n{scores}"
            if verdict is not None:
                text += f"\n{verdict.text}"
        else:
            text = f"{row['id']}  FAILED\n{row['error']}"
        lines = []
        for part in text.split("\n"):
            lines += textwrap.wrap(
                part, width=max(20, (3 * cell) // max(6, int(getattr(font, "size", 10)) // 2 + 1))
            ) or [""]
        colour = "black" if row["status"] == R.OK else "red"
        if verdict is not None:
            colour = "darkgreen" if verdict.clean else ("darkorange" if verdict.success else "red")
        draw.multiline_text((4, y + cell + 2), "\n".join(lines[:8]), fill=colour, font=font)
        y += cell + label_h + 4
    return sheet


def score_text(row: dict) -> str:
    """One line of a row's scores and filter verdict: ``align +0.12 psnr 28.1 ssim 0.93 kept``."""
    short = {"score_alignment": ("align", "{:+.3f}"), "score_psnr": ("psnr", "{:.1f}"),
             "score_ssim": ("ssim", "{:.3f}"), "score_mask_components": ("parts", "{:d}")}  # fmt: skip
    parts = [
        f"{name} {fmt.format(row[col])}" for col, (name, fmt) in short.items() if row.get(col) is not None
    ]
    if row.get("candidate"):
        parts.append(f"candidate {row['candidate']}")
    if row.get("keep") is not None:
        parts.append("kept" if row["keep"] else f"REJECTED ({row.get('reject_reason')})")
    return "  ".join(parts)


@dataclass(frozen=True)
class Preview:
    """What ``render_preview`` showed: rows, and of them the judged ones and their verdicts."""

    rows: int
    judged: int
    success: int
    clean: int


def render_preview(
    output: str, out_png: str, storage: StorageConfig, rows: int = 8, cell: int = 160, show: str = "all"
) -> Preview:
    """Write the contact sheet of ``output`` to ``out_png`` (local or remote); ``show``: all rows, the
    kept ones or the rejected ones."""
    chosen = read_rows(output, storage, rows, show=show)
    if not chosen:
        raise ValueError(f"no {show} rows in {output}")
    verdicts = [shapes_verdict(row) for row in chosen]
    sheet = contact_sheet(chosen, cell=cell, verdicts=verdicts)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    fs, path = filesystem(out_png, storage)
    parent = path.rsplit("/", 1)[0]
    if parent and parent != path:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(buffer.getvalue())
    judged = [v for v in verdicts if v is not None]
    return Preview(len(chosen), len(judged), sum(v.success for v in judged), sum(v.clean for v in judged))

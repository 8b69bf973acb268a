"""``diffedit-batch preview``: a PNG contact sheet (input | mask | edit) of some output rows."""

from __future__ import annotations

import io
import textwrap

from PIL import Image, ImageDraw, ImageFont

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
]


def read_rows(output: str, storage: StorageConfig, rows: int, include_failed: bool = True) -> list[dict]:
    """Up to ``rows`` output rows (ok rows first, in part order), read with plain pyarrow."""
    fs, path = filesystem(output, storage)
    parts = O.part_files(fs, path)
    if not parts:
        raise ValueError(f"no output parts in {output} (part-*.parquet)")
    ok: list[dict] = []
    failed: list[dict] = []
    for part in parts:
        table = read_parquet(fs, part, PREVIEW_COLUMNS)
        for row in table.to_pylist():
            (ok if row["status"] == R.OK else failed).append(row)
        if len(ok) >= rows:
            break
    chosen = ok[:rows]
    if include_failed and len(chosen) < rows:
        chosen += failed[: rows - len(chosen)]
    return sorted(chosen, key=lambda r: (r["status"] != R.OK, r["id"]))


def contact_sheet(rows: list[dict], cell: int = 160) -> Image.Image:
    """A grid: one line per row, columns input | mask | edit, captioned with id, query and mask area
    (or the error of a failed row)."""
    font = ImageFont.load_default(size=max(10, cell // 13))
    label_h = cell // 2
    header_h = cell // 6
    width, height = 3 * cell + 4 * 4, header_h + len(rows) * (cell + label_h + 4) + 4
    sheet = Image.new("RGB", (width, max(height, header_h + 8)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, title in enumerate(("input", "mask", "edit")):
        draw.text((4 + i * (cell + 4), 2), title, fill="black", font=font)
    y = header_h
    for row in rows:
        for i, column in enumerate(("input_image", "mask", "edited_image")):
            x = 4 + i * (cell + 4)
            value = row.get(column)
            if value and value.get("bytes"):
                image = Image.open(io.BytesIO(value["bytes"])).convert("RGB")
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
            text = f"{row['id']}  mask {row['mask_area']:.0%}\nQ: {row['query']}"
        else:
            text = f"{row['id']}  FAILED\n{row['error']}"
        lines = []
        for part in text.split("\n"):
            lines += textwrap.wrap(
                part, width=max(20, (3 * cell) // max(6, int(getattr(font, "size", 10)) // 2 + 1))
            ) or [""]
        draw.multiline_text(
            (4, y + cell + 2),
            "\n".join(lines[:3]),
            fill="black" if row["status"] == R.OK else "red",
            font=font,
        )
        y += cell + label_h + 4
    return sheet


def render_preview(output: str, out_png: str, storage: StorageConfig, rows: int = 8, cell: int = 160) -> int:
    """Write the contact sheet of ``output`` to ``out_png`` (local or remote); the number of rows shown."""
    chosen = read_rows(output, storage, rows)
    sheet = contact_sheet(chosen, cell=cell)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    fs, path = filesystem(out_png, storage)
    parent = path.rsplit("/", 1)[0]
    if parent and parent != path:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(buffer.getvalue())
    return len(chosen)

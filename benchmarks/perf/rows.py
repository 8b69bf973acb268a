"""Benchmark rows: held-out shapes edit tasks as PNG bytes, texts and per-row seeds."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image


@dataclass(frozen=True)
class BenchRow:
    """One edit: the input as PNG bytes (decoded inside the timed image I/O), texts and seed."""

    id: str
    png: bytes
    caption: str
    query: str
    seed: int


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of ``image`` (PIL's default compression, as the job writes them)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(data: bytes) -> Image.Image:
    """An RGB image from PNG bytes, fully loaded."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")


def make_rows(n: int, seed: int = 0, size: int = 64) -> list[BenchRow]:
    """``n`` held-out shapes edit tasks (``make_edit_tasks(seed, n, size)``) as rows; row i's edit seed
    is ``seed * 1_000_000 + i``."""
    from diffedit.shapes.scenes import make_edit_tasks

    tasks = make_edit_tasks(seed, n, size=size)
    return [
        BenchRow(t.id, encode_png(t.image.convert("RGB")), t.caption, t.query, seed * 1_000_000 + i)
        for i, t in enumerate(tasks)
    ]


def chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive slices of ``items`` of at most ``size``."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])

"""Manifest builders: ``prepare shapes`` (the demo's synthetic manifest) and ``prepare coco-recolor``.

Both are pure functions from their inputs to rows, plus a writer; the same arguments always give the
same manifest.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline import output as O
from pipeline.config import StorageConfig
from pipeline.images import encode_png
from pipeline.storage import filesystem, join, parquet_bytes

MANIFEST_NAME = "manifest.parquet"


def write_manifest(
    rows: Sequence[Mapping[str, Any]], out: str, storage: StorageConfig, schema: pa.Schema
) -> str:
    """Write ``rows`` as one Parquet file: ``out`` itself if it ends in ``.parquet``, else
    ``out/manifest.parquet``; written to a hidden temporary name, then renamed. Returns the path."""
    fs, path = filesystem(out, storage)
    target = path if path.endswith(".parquet") else join(path, MANIFEST_NAME)
    table = pa.Table.from_pylist([dict(r) for r in rows], schema=schema)
    O.write_bytes_atomic(fs, target, parquet_bytes(table, row_group_size=1024))
    return target


# --------------------------------------------------------------------------- shapes

SHAPES_SCHEMA = pa.schema(
    [("id", pa.string()), ("image_bytes", pa.binary()), ("caption", pa.string()), ("query", pa.string()),
     ("kind", pa.string()), ("scene_seed", pa.int64())]
)  # fmt: skip


def shapes_rows(
    rows: int, seed: int = 0, size: int = 64, kinds: tuple[str, ...] = ("recolor",)
) -> list[dict[str, Any]]:
    """``rows`` held-out edit tasks of the synthetic shapes world (``diffedit.shapes.scenes``), with
    their images inline as PNG (``image_bytes``)."""
    from diffedit.shapes.scenes import make_edit_tasks

    tasks = make_edit_tasks(seed, rows, size=size, kinds=kinds)
    return [
        {"id": t.id, "image_bytes": encode_png(t.image.convert("RGB")), "caption": t.caption, "query": t.query,
         "kind": t.kind, "scene_seed": int(t.seed)}
        for t in tasks
    ]  # fmt: skip


# --------------------------------------------------------------------------- COCO recolour

#: Colour words recognised in captions; ``grey`` and ``gray`` are one colour.
COLOURS = (
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "brown",
    "black",
    "white",
    "gray",
    "grey",
)
#: Colours a query may take (one spelling of grey).
TARGET_COLOURS = tuple(c for c in COLOURS if c != "grey")
#: A colour word with the article before it, if any ("a red", "An orange", "blue").
_PHRASE_RE = re.compile(r"\b(?:(an?)\s+)?(" + "|".join(COLOURS) + r")\b", re.IGNORECASE)

COCO_SCHEMA = pa.schema(
    [("id", pa.string()), ("image", pa.string()), ("caption", pa.string()), ("query", pa.string()),
     ("source_colour", pa.string()), ("target_colour", pa.string()), ("coco_image_id", pa.int64()),
     ("coco_caption_id", pa.int64())]
)  # fmt: skip


@dataclass(frozen=True)
class CocoStats:
    """What ``coco_recolor_rows`` did with the captions."""

    images: int
    captions: int
    with_colour: int
    without_colour: int
    rows: int


def _is_fruit(match: re.Match[str]) -> bool:
    """ "an orange" is taken for the fruit, never recoloured."""
    article = match.group(1)
    return match.group(2).lower() == "orange" and article is not None and article.lower() == "an"


def find_colour(caption: str) -> re.Match[str] | None:
    """The first colour word of ``caption`` (whole word, any case; group 2), skipping "an orange"."""
    for match in _PHRASE_RE.finditer(caption):
        if not _is_fruit(match):
            return match
    return None


def _canonical(colour: str) -> str:
    colour = colour.lower()
    return "gray" if colour == "grey" else colour


def target_colour(source: str, key: str, seed: int) -> str:
    """A colour other than ``source``, chosen by a hash of (seed, key): deterministic and spread evenly."""
    choices = [c for c in TARGET_COLOURS if c != _canonical(source)]
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return choices[int.from_bytes(digest[:8], "little") % len(choices)]


def recolour(caption: str, seed: int, key: str) -> tuple[str, str, str] | None:
    """(query, source colour, target colour): every occurrence of the caption's first colour word
    replaced by the target colour (keeping a leading capital and fixing "a"/"an" before it), or None
    when the caption has no colour word."""
    first = find_colour(caption)
    if first is None:
        return None
    source = _canonical(first.group(2))
    target = target_colour(source, key, seed)

    def replace(m: re.Match[str]) -> str:
        article, word = m.group(1), m.group(2)
        if _canonical(word) != source or _is_fruit(m):
            return m.group(0)
        new = target.capitalize() if word[0].isupper() else target
        if article is None:
            return new
        a = "an" if new[0].lower() in "aeiou" else "a"
        return f"{a.capitalize() if article[0].isupper() else a} {new}"

    return _PHRASE_RE.sub(replace, caption), source, target


def coco_recolor_rows(
    captions: Mapping[str, Any],
    image_prefix: str,
    *,
    seed: int = 0,
    per_image: int = 1,
    max_rows: int | None = None,
) -> tuple[list[dict[str, Any]], CocoStats]:
    """Manifest rows from a COCO captions file (``{"images": [...], "annotations": [...]}``).

    Captions are taken in (image id, caption id) order; a caption with a colour word gives a row whose
    query recolours it (``recolour``), up to ``per_image`` rows per image; captions without one are
    counted and left out. The image URI is ``image_prefix`` joined with the image's ``file_name``.
    """
    if not isinstance(captions, Mapping) or "images" not in captions or "annotations" not in captions:
        raise ValueError("not a COCO captions file: needs 'images' and 'annotations'")
    files = {int(img["id"]): img["file_name"] for img in captions["images"]}
    annotations = sorted(captions["annotations"], key=lambda a: (int(a["image_id"]), int(a["id"])))
    rows: list[dict[str, Any]] = []
    taken: dict[int, int] = {}
    with_colour = without_colour = 0
    prefix = image_prefix if image_prefix.endswith("/") else image_prefix + "/"
    for ann in annotations:
        image_id, caption_id = int(ann["image_id"]), int(ann["id"])
        caption = " ".join(str(ann["caption"]).split())
        result = recolour(caption, seed, str(caption_id))
        if result is None:
            without_colour += 1
            continue
        with_colour += 1
        if image_id not in files or taken.get(image_id, 0) >= per_image:
            continue
        if max_rows is not None and len(rows) >= max_rows:
            continue
        taken[image_id] = taken.get(image_id, 0) + 1
        query, source, target = result
        rows.append(
            {"id": f"coco-{image_id}-{caption_id}", "image": prefix + files[image_id], "caption": caption,
             "query": query, "source_colour": source, "target_colour": target, "coco_image_id": image_id,
             "coco_caption_id": caption_id}
        )  # fmt: skip
    stats = CocoStats(
        images=len(files),
        captions=len(annotations),
        with_colour=with_colour,
        without_colour=without_colour,
        rows=len(rows),
    )
    return rows, stats


def load_coco_captions(uri: str, storage: StorageConfig) -> dict[str, Any]:
    """Read a COCO captions JSON from a local path or URI."""
    fs, path = filesystem(uri, storage)
    try:
        with fs.open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"captions file {uri} not found") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"captions file {uri} is not valid JSON: {exc}") from None

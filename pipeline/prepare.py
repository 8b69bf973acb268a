"""Manifest builders: ``prepare shapes`` (the demo's synthetic manifest) and ``prepare coco-recolor``.

Both are pure functions from their inputs to rows, plus a writer; the same arguments always give the
same manifest.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
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
    missing_image: int = 0  # captions with a colour word whose image id is not in ``images`` (left out)


#: After "an orange", words that make it the fruit: nothing, punctuation, or one of these (function
#: words, verbs that follow a noun, and nouns of the fruit's parts). Any other word makes "orange" an
#: adjective, the colour: "an orange cat", "an orange countertop".
FRUIT_FOLLOWERS = frozenset(
    [
        "on",
        "in",
        "at",
        "of",
        "with",
        "and",
        "or",
        "but",
        "to",
        "from",
        "by",
        "near",
        "next",
        "beside",
        "behind",
        "under",
        "over",
        "into",
        "onto",
        "off",
        "for",
        "that",
        "which",
        "who",
        "while",
        "as",
        "than",
        "is",
        "are",
        "was",
        "were",
        "be",
        "being",
        "been",
        "has",
        "have",
        "had",
        "sits",
        "sitting",
        "sat",
        "lies",
        "lying",
        "rests",
        "resting",
        "sliced",
        "cut",
        "peeled",
        "half",
        "halves",
        "slice",
        "slices",
        "wedge",
        "wedges",
        "peel",
        "peels",
        "segment",
        "segments",
        "juice",
        "tree",
        "trees",
        "rind",
    ]
)

#: Colour words that start a name, not a colour (compared case-insensitively, two words).
NAMED = frozenset(
    {"red sox", "white sox", "blue jays", "white house", "red cross", "red bull", "black lab",
     "yellow lab", "chocolate lab", "green bay", "orange county", "red square", "black forest"}
)  # fmt: skip

_WORD_RE = re.compile(r"[A-Za-z']+")


def _next_word(caption: str, end: int) -> str | None:
    """The word right after position ``end`` (None at the end, or when punctuation comes first)."""
    m = re.match(r"\s+([A-Za-z']+)", caption[end:])
    return m.group(1) if m else None


def _title_cased(caption: str) -> bool:
    """Most words capitalised ("A Red Stop Sign"): capitals say nothing about names there."""
    words = [w for w in _WORD_RE.findall(caption) if len(w) > 3]
    return bool(words) and sum(w[0].isupper() for w in words) >= 0.8 * len(words)


def _is_fruit(match: re.Match[str], caption: str) -> bool:
    """ "an orange" followed by nothing, punctuation or a word of ``FRUIT_FOLLOWERS`` is the fruit."""
    article = match.group(1)
    if match.group(2).lower() != "orange" or article is None or article.lower() != "an":
        return False
    following = _next_word(caption, match.end())
    return following is None or following.lower() in FRUIT_FOLLOWERS


def _is_name(match: re.Match[str], caption: str) -> bool:
    """A colour word that starts a name: a known one (``NAMED``: "the Red Sox", "a black Lab"), or,
    outside a title-cased or upper-case caption, a capitalised colour word that is not the caption's
    first word and is followed by a capitalised word ("the Blue Mosque"). A documented limit: names
    in lower case that are not in ``NAMED`` are taken for colours."""
    word = match.group(2)
    following = _next_word(caption, match.end())
    if following and f"{word} {following}".lower() in NAMED:
        return True
    if word.isupper() or not word[0].isupper() or match.start(2) == 0 or _title_cased(caption):
        return False
    return bool(following) and following[0].isupper()


def _skipped(match: re.Match[str], caption: str) -> bool:
    return _is_fruit(match, caption) or _is_name(match, caption)


def find_colour(caption: str) -> re.Match[str] | None:
    """The first colour word of ``caption`` (whole word, any case; group 2), skipping the fruit ("an
    orange" on its own) and names ("the Red Sox")."""
    for match in _PHRASE_RE.finditer(caption):
        if not _skipped(match, caption):
            return match
    return None


def _canonical(colour: str) -> str:
    colour = colour.lower()
    return "gray" if colour == "grey" else colour


def colours_in(caption: str) -> set[str]:
    """Every colour word of ``caption`` (canonical), names and the fruit included."""
    return {_canonical(m.group(2)) for m in _PHRASE_RE.finditer(caption)}


def target_colour(
    source: str, key: str, seed: int, exclude: set[str] | frozenset[str] = frozenset()
) -> str | None:
    """A colour other than ``source`` and ``exclude`` (the caption's other colours: "a black and white
    photo" must not become "a white and white photo"), chosen by a hash of (seed, key): deterministic
    and spread evenly. None when no colour is left."""
    banned = {_canonical(source), *(_canonical(c) for c in exclude)}
    choices = [c for c in TARGET_COLOURS if c not in banned]
    if not choices:
        return None
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return choices[int.from_bytes(digest[:8], "little") % len(choices)]


def _same_case(new: str, like: str, shout: bool = False) -> str:
    """``new`` in the case pattern of ``like``: UPPER, Title or lower (a one-letter ``like`` such as
    "A" is upper case only when ``shout``, the colour word itself being upper case)."""
    if like.isupper() and (len(like) > 1 or shout):
        return new.upper()
    if like[0].isupper():
        return new[0].upper() + new[1:]
    return new.lower()


def recolour(caption: str, seed: int, key: str) -> tuple[str, str, str] | None:
    """(query, source colour, target colour): every occurrence of the caption's first colour word
    replaced by the target colour (keeping its case pattern, and fixing "a"/"an" before it), or None
    when the caption has no colour word (or no other colour is left for it)."""
    first = find_colour(caption)
    if first is None:
        return None
    source = _canonical(first.group(2))
    target = target_colour(source, key, seed, exclude=colours_in(caption))
    if target is None:
        return None

    def replace(m: re.Match[str]) -> str:
        article, word = m.group(1), m.group(2)
        if _canonical(word) != source or _skipped(m, caption):
            return m.group(0)
        shout = word.isupper() and len(word) > 1
        new = _same_case(target, word, shout)
        if article is None:
            return new
        a = "an" if target[0] in "aeiou" else "a"
        space = m.group(0)[len(article) : m.start(2) - m.start(0)]
        return f"{_same_case(a, article, shout)}{space}{new}"

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
    query recolours it (``recolour``), up to ``per_image`` rows per image; captions without one, and
    captions whose image id is not in ``images``, are counted and left out. The image URI is ``image_prefix`` joined with the image's ``file_name``.
    """
    if not isinstance(captions, Mapping) or "images" not in captions or "annotations" not in captions:
        raise ValueError("not a COCO captions file: needs 'images' and 'annotations'")
    files = {int(img["id"]): img["file_name"] for img in captions["images"]}
    annotations = sorted(captions["annotations"], key=lambda a: (int(a["image_id"]), int(a["id"])))
    rows: list[dict[str, Any]] = []
    taken: dict[int, int] = {}
    with_colour = without_colour = missing_image = 0
    prefix = image_prefix if image_prefix.endswith("/") else image_prefix + "/"
    for ann in annotations:
        image_id, caption_id = int(ann["image_id"]), int(ann["id"])
        caption = " ".join(str(ann["caption"]).split())
        result = recolour(caption, seed, str(caption_id))
        if result is None:
            without_colour += 1
            continue
        with_colour += 1
        if image_id not in files:
            missing_image += 1
            continue
        if taken.get(image_id, 0) >= per_image:
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
        missing_image=missing_image,
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


# --------------------------------------------------------------------------- the bundled model

#: The models shipped inside the package (``pipeline/models`` links to the repository's ``models/``;
#: a wheel carries the files of ``BUNDLED_FILES`` of ``shapes-v3``).
BUNDLED_MODELS = Path(__file__).resolve().parent / "models"
BUNDLED = ("shapes-v3",)
BUNDLED_FILES = ("model_index.json", "*/*.json", "*/*.safetensors")


def copy_bundled_model(name: str, out: str | Path) -> int:
    """Copy the files a load reads of the bundled model ``name`` to ``out`` (the presets look for
    ``models/shapes-v3`` under the working directory); the number of files copied, 0 when ``out``
    already holds them, byte for byte. ``ValueError``: an unknown name, or ``out`` holding other files."""
    if name not in BUNDLED:
        raise ValueError(f"no bundled model {name!r}; bundled: {list(BUNDLED)}")
    source = BUNDLED_MODELS / name
    files = sorted({f for pattern in BUNDLED_FILES for f in source.glob(pattern) if f.is_file()})
    if not (source / "model_index.json").is_file() or not files:
        raise ValueError(f"the bundled model {name} is missing from this installation ({source})")
    dest = Path(out)
    pairs = [(f, dest / f.relative_to(source)) for f in files]
    if dest.exists() and any(dest.iterdir()):
        if all(d.is_file() and d.read_bytes() == f.read_bytes() for f, d in pairs):
            return 0
        raise ValueError(f"{dest} exists and holds other files: remove it, or give another --out")
    for f, d in pairs:
        d.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, d)
    return len(pairs)

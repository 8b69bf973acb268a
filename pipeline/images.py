"""Fetching and decoding row images: the allow-list, size limits, EXIF orientation, RGB.

Every failure is an ``ImageError`` whose message says what was wrong with the row; the fetch stage
turns it into a ``failed`` output row and the job goes on.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from diffedit.images import to_rgb
from pipeline.config import ImagesConfig, StorageConfig
from pipeline.storage import filesystem, normalize_uri, redact, scheme_of


class ImageError(ValueError):
    """A row's image cannot be used; the message is the row's ``error``."""


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image with EXIF orientation applied, and where it came from."""

    image: Image.Image  # RGB
    width: int
    height: int
    source_mode: str  # the mode the file had


def is_allowed(uri: str, allow: Sequence[str]) -> bool:
    """Whether ``uri`` starts with one of the ``allow`` prefixes (both normalised, so ``..`` cannot
    climb out of an allowed folder). A bare scheme (``s3://``) allows the whole scheme; a local
    folder allows itself and everything under it."""
    if not allow:
        return False
    target = normalize_uri(uri)
    scheme = scheme_of(uri)
    for entry in allow:
        entry_scheme = scheme_of(entry)
        if entry.rstrip("/").endswith(":"):  # a bare scheme: "s3://", "file://"
            if entry_scheme == scheme or (entry_scheme == "file" and scheme in ("file", "local")):
                return True
            continue
        if entry_scheme != scheme and not (entry_scheme in ("file", "local") and scheme in ("file", "local")):
            continue
        prefix = normalize_uri(entry)
        if entry_scheme in ("file", "local"):
            # A folder allows itself and what lies under it, not a sibling sharing its name's start.
            if target == prefix or target.startswith(prefix.rstrip("/") + "/"):
                return True
        elif target.startswith(prefix):
            return True
    return False


def fetch(uri: str, images: ImagesConfig, storage: StorageConfig) -> bytes:
    """The bytes of ``uri``, refused when it is outside ``images.allow`` or over ``images.max_bytes``."""
    if not isinstance(uri, str) or not uri.strip():
        raise ImageError("image URI is empty")
    shown = redact(uri)
    if not is_allowed(uri, images.allow):
        raise ImageError(f"image URI {shown} is not in the allow-list (images.allow: {list(images.allow)})")
    try:
        fs, path = filesystem(uri, storage)
        with fs.open(path, "rb") as f:
            data = f.read(images.max_bytes + 1)
    except FileNotFoundError:
        raise ImageError(f"image {shown} not found") from None
    except ValueError as exc:
        raise ImageError(f"cannot read image {shown}: {exc}") from None
    except Exception as exc:  # network, permissions, ...: the row fails with the reason
        raise ImageError(f"cannot read image {shown}: {type(exc).__name__}: {exc}") from None
    if len(data) > images.max_bytes:
        raise ImageError(f"image {shown} is larger than images.max_bytes = {images.max_bytes} bytes")
    return data


def decode(data: bytes, images: ImagesConfig, what: str = "image") -> DecodedImage:
    """Decode ``data``: the header is checked against the pixel and side limits before any pixel is
    decoded (the decompression-bomb guard), then the image is loaded in full (truncation is an
    error), its EXIF orientation applied and its mode converted to RGB."""
    if data is None or len(data) == 0:
        raise ImageError(f"{what} is empty (0 bytes)")
    if len(data) > images.max_bytes:
        raise ImageError(f"{what} is larger than images.max_bytes = {images.max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{what} is a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise ImageError(f"{what} is not a readable image (unknown or corrupt format)") from None
    except Exception as exc:
        raise ImageError(f"{what} cannot be opened: {type(exc).__name__}: {exc}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"{what} has zero size ({width}x{height})")
    if width * height > images.max_pixels:
        raise ImageError(
            f"{what} is {width}x{height} = {width * height} pixels, above images.max_pixels = "
            f"{images.max_pixels} (decompression-bomb limit)"
        )
    if max(width, height) > images.max_side:
        raise ImageError(
            f"{what} is {width}x{height}, its longer side is above images.max_side = {images.max_side}"
        )
    mode = image.mode
    if mode not in images.modes:
        raise ImageError(f"{what} has unsupported mode {mode!r} (images.modes: {list(images.modes)})")
    try:
        image.load()  # a truncated file fails here (PIL's LOAD_TRUNCATED_IMAGES stays False)
        image = ImageOps.exif_transpose(image)
        rgb = to_rgb(image)
        rgb.load()
    except Exception as exc:
        raise ImageError(f"{what} cannot be decoded: {type(exc).__name__}: {exc}") from None
    if rgb.mode != "RGB":  # pragma: no cover - to_rgb's contract
        rgb = rgb.convert("RGB")
    return DecodedImage(image=rgb, width=rgb.width, height=rgb.height, source_mode=mode)


def load_row_image(
    uri: str | None, data: bytes | None, images: ImagesConfig, storage: StorageConfig
) -> DecodedImage:
    """A row's image from its ``image`` URI or its ``image_bytes`` (exactly one must be set)."""
    has_uri = uri is not None and uri != ""
    has_bytes = data is not None and len(data) > 0
    if has_uri and has_bytes:
        raise ImageError("row sets both image and image_bytes; set exactly one")
    if has_bytes:
        return decode(data, images, "image_bytes")  # type: ignore[arg-type]
    if has_uri:
        return decode(fetch(uri, images, storage), images, f"image {redact(uri)}")  # type: ignore[arg-type]
    if data is not None:
        raise ImageError("image_bytes is empty (0 bytes)")
    raise ImageError("row has no image (image and image_bytes are both empty)")


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of ``image`` (compress level 6: the PIL default, a balance of size and speed)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()

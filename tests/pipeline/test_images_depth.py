"""Issue 10, items 6 and 7: deep images are rescaled by their type's range (not stretched per image), and
the job's ``images.max_pixels`` is the decompression-bomb limit in every process that decodes, above
and below Pillow's own default (178,956,970 pixels), named in the error."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image
from pipeline_testing import REPO

from diffedit.images import to_rgb
from pipeline.config import ImagesConfig
from pipeline.images import ImageError, decode

PILLOW_BOMB_ERROR = 2 * 89_478_485  # Pillow raises above twice Image.MAX_IMAGE_PIXELS = 178,956,970


def _encoded(a: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(a).save(buffer, format=fmt)
    return buffer.getvalue()


def test_uniform_16_bit_image_stays_uniform_at_its_level():
    a = np.full((16, 16), 60000, np.uint16)
    image = Image.open(io.BytesIO(_encoded(a)))
    assert image.mode == "I;16"
    rgb = np.asarray(to_rgb(image))
    assert (rgb == 233).all()  # 60000 / 257 = 233.46, not black


def test_dark_16_bit_image_keeps_its_mean():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2 * 4 * 257, (32, 32)).astype(np.uint16)  # mean ~ 4 in 8 bits
    decoded = decode(_encoded(a), ImagesConfig())
    mean8 = float(np.asarray(decoded.image, np.float64).mean())
    assert abs(mean8 - a.mean() / 257) < 0.6, mean8  # not stretched to ~127
    assert mean8 < 6


def test_16_bit_extremes_and_tiff():
    a = np.array([[0, 257, 65535, 32896]], np.uint16)
    rgb = np.asarray(to_rgb(Image.open(io.BytesIO(_encoded(a, "TIFF")))))[..., 0]
    assert rgb.tolist() == [[0, 1, 255, 128]]


def test_float_images_use_the_unit_range():
    flat = Image.fromarray(np.full((4, 4), 0.5, np.float32), "F")
    assert (np.asarray(to_rgb(flat)) == 128).all()  # a constant stays that constant
    ramp = Image.fromarray(np.array([[-1.0, 0.0, 0.25, 1.0, 7.0, np.nan]], np.float32), "F")
    assert np.asarray(to_rgb(ramp))[..., 0].tolist() == [[0, 0, 64, 255, 255, 0]]


def test_32_bit_integer_images_are_read_as_16_bit_values():
    image = Image.fromarray(np.array([[0, 257, 65535, 70000, -5]], np.int32), "I")
    assert np.asarray(to_rgb(image))[..., 0].tolist() == [[0, 1, 255, 255, 0]]


def crafted_png(width: int, height: int) -> bytes:
    """A PNG whose header announces width x height 1-bit pixels, with one tiny IDAT: a few dozen bytes
    that would decode to a huge image (nothing that large is allocated before the header check)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def test_max_pixels_below_pillows_limit_is_the_one_named():
    data = crafted_png(30_000, 30_000)  # 900 Mpx, above Pillow's own error threshold
    limits = ImagesConfig(max_pixels=100_000_000, max_side=50_000)
    with pytest.raises(ImageError, match=r"900000000 pixels, above images\.max_pixels = 100000000"):
        decode(data, limits)


def test_max_pixels_above_pillows_limit_is_honoured():
    # 20,000 x 10,000 = 200 Mpx: above Pillow's 178,956,970, below the job's 250 M. Pillow must not
    # refuse it; the (crafted, empty) pixel data then fails to decode, which is this row's own error.
    data = crafted_png(20_000, 10_000)
    assert PILLOW_BOMB_ERROR < 20_000 * 10_000
    limits = ImagesConfig(max_pixels=250_000_000, max_side=50_000)
    with pytest.raises(ImageError) as info:
        decode(data, limits)
    assert "cannot be decoded" in str(info.value)
    assert "decompression bomb" not in str(info.value).lower()
    with pytest.raises(ImageError, match=r"200000000 pixels, above images\.max_pixels = 150000000"):
        decode(data, ImagesConfig(max_pixels=150_000_000, max_side=50_000))


def test_the_limit_holds_in_a_fresh_process():
    """A worker process that never imported anything else of the job (as a Ray worker) enforces it."""
    code = (
        "import sys; from pipeline.images import decode, ImageError; from pipeline.config import ImagesConfig\n"
        "from test_images_depth import crafted_png\n"
        "try:\n"
        "    decode(crafted_png(20_000, 10_000), ImagesConfig(max_pixels=250_000_000, max_side=50_000))\n"
        "except ImageError as e:\n"
        "    print(e)\n"
    )
    env_path = f"{REPO}:{REPO / 'tests' / 'pipeline'}"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": env_path}, check=True
    ).stdout
    assert "cannot be decoded" in out and "bomb" not in out.lower(), out

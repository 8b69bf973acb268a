"""Fetching and decoding row images: allow-list, limits, truncation, modes, EXIF orientation, S3."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pipeline_testing import png_bytes, s3fs_for

from pipeline.config import ImagesConfig, StorageConfig
from pipeline.images import ImageError, decode, fetch, is_allowed, load_row_image


def test_allow_list_prefixes_schemes_and_traversal(tmp_path):
    allow = ("s3://bucket/coco/", str(tmp_path / "imgs"), "https://")
    assert is_allowed("s3://bucket/coco/a.jpg", allow)
    assert not is_allowed("s3://bucket/other/a.jpg", allow)
    assert not is_allowed("s3://bucket/coco/../secret/a.jpg", allow)
    assert not is_allowed("s3://bucket/cocoa/a.jpg", allow)
    assert is_allowed("https://example.com/x.png", allow)
    assert not is_allowed("http://example.com/x.png", allow)
    assert is_allowed(str(tmp_path / "imgs" / "a.png"), allow)
    assert is_allowed("file://" + str(tmp_path / "imgs" / "a.png"), allow)
    assert not is_allowed(str(tmp_path / "imgs" / ".." / "etc.png"), allow)
    assert not is_allowed(str(tmp_path / "imgs2" / "a.png"), allow)
    assert not is_allowed("/etc/passwd", allow)
    assert is_allowed("/etc/passwd", ("file://",))
    assert not is_allowed("s3://bucket/coco/a.jpg", ())


LIMITS = ImagesConfig(allow=("file://",), max_pixels=100_000, max_side=300, max_bytes=200_000)


def test_decode_good_images_in_any_common_mode():
    for mode in ("RGB", "L", "P", "RGBA", "LA", "CMYK", "1"):
        fmt = "JPEG" if mode == "CMYK" else "PNG"
        decoded = decode(png_bytes(1, (40, 24), mode=mode, fmt=fmt), LIMITS)
        assert decoded.image.mode == "RGB" and (decoded.width, decoded.height) == (40, 24)
        assert decoded.source_mode == mode


def test_exif_orientation_is_applied():
    image = Image.fromarray(np.zeros((20, 40, 3), np.uint8))  # 40 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    decoded = decode(buffer.getvalue(), LIMITS)
    assert (decoded.width, decoded.height) == (20, 40)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "is empty"),
        (b"this is not an image at all", "not a readable image"),
        (png_bytes(2, (64, 64))[:300], "cannot be decoded"),  # truncated
        (png_bytes(3, (400, 10)), "longer side is above images.max_side = 300"),
        (png_bytes(4, (320, 320), mode="L"), "above images.max_pixels = 100000 (decompression-bomb limit)"),
        (png_bytes(5, (8, 8), mode="F", fmt="TIFF"), "unsupported mode 'F'"),
        (b"\x89PNG" + b"0" * 250_000, "larger than images.max_bytes"),
    ],
)
def test_bad_images_give_clear_errors(data, message):
    with pytest.raises(ImageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode(data, LIMITS)


def test_decompression_bomb_is_refused_before_decoding():
    # 8000 x 8000 single-colour PNG: tens of KB encoded, 192 MB once decoded to RGB.
    big = Image.new("L", (8000, 8000))
    buffer = io.BytesIO()
    big.save(buffer, format="PNG", optimize=True)
    limits = ImagesConfig(max_bytes=10_000_000, max_side=10_000)  # max_pixels: the default 50 M
    assert len(buffer.getvalue()) < 1_000_000
    with pytest.raises(ImageError, match=r"64000000 pixels, above images\.max_pixels = 50000000"):
        decode(buffer.getvalue(), limits)


def test_row_image_sources(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes(0, (16, 16)))
    storage = StorageConfig()
    allow = ImagesConfig(allow=(str(tmp_path),))
    assert load_row_image(str(path), None, allow, storage).width == 16
    assert load_row_image(None, png_bytes(0, (8, 8)), allow, storage).width == 8
    with pytest.raises(ImageError, match="both image and image_bytes"):
        load_row_image(str(path), png_bytes(0), allow, storage)
    with pytest.raises(ImageError, match="no image"):
        load_row_image(None, None, allow, storage)
    with pytest.raises(ImageError, match="not found"):
        load_row_image(str(tmp_path / "missing.png"), None, allow, storage)
    with pytest.raises(ImageError, match="not in the allow-list"):
        load_row_image(str(path), None, ImagesConfig(allow=("s3://",)), storage)


def test_fetch_from_s3(s3):
    fs = s3fs_for(s3)
    fs.pipe("test-bucket/imgs/a.png", png_bytes(0, (16, 16)))
    storage = StorageConfig(endpoint_url=s3["endpoint_url"])
    images = ImagesConfig(allow=("s3://test-bucket/imgs/",))
    assert decode(fetch("s3://test-bucket/imgs/a.png", images, storage), images).width == 16
    with pytest.raises(ImageError, match=r"s3://test-bucket/imgs/missing\.png not found"):
        fetch("s3://test-bucket/imgs/missing.png", images, storage)
    with pytest.raises(ImageError, match="not in the allow-list"):
        fetch("s3://test-bucket/other/a.png", images, storage)

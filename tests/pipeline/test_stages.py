"""The three row stages as plain functions (no Ray): fetch, edit with a real tiny editor, encode."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image
from pipeline_testing import FAST_PARAMS, png_bytes

from diffedit.editor import DiffEditor
from diffedit.params import EditParams
from diffedit.tiny import tiny_bundle
from pipeline import rows as R
from pipeline.config import ImagesConfig, StorageConfig
from pipeline.manifest import default_seed
from pipeline.stages import edit_rows, encode_rows, fetch_rows, pixels_sha256, prepare_row

PARAMS = EditParams.from_dict(FAST_PARAMS)


def manifest_batch() -> pa.Table:
    rows = [
        {"id": "ok1", "image_bytes": png_bytes(1, (40, 24)), "caption": "a red circle", "query": "a blue circle"},
        {"id": "ok2", "image_bytes": png_bytes(2), "caption": None, "query": "a green square", "seed": 7,
         "guidance_scale": 2.0},
        {"id": "noquery", "image_bytes": png_bytes(3), "query": "  "},
        {"id": "badparam", "image_bytes": png_bytes(4), "query": "q", "num_mask_draws": -1},
        {"id": "badseed", "image_bytes": png_bytes(5), "query": "q", "seed": -3},
        {"id": "done", "image_bytes": png_bytes(6), "query": "q"},
    ]  # fmt: skip
    schema = pa.schema([("id", pa.string()), ("image_bytes", pa.binary()), ("caption", pa.string()),
                        ("query", pa.string()), ("seed", pa.int64()), ("guidance_scale", pa.float64()),
                        ("num_mask_draws", pa.int64())])  # fmt: skip
    return pa.Table.from_pylist(rows, schema=schema)


@pytest.fixture(scope="module")
def fetched() -> pa.Table:
    return fetch_rows(
        manifest_batch(), params=PARAMS, images=ImagesConfig(), storage=StorageConfig(), done={"done"}
    )


def test_fetch_checks_rows_and_drops_committed_ones(fetched):
    rows = {r["id"]: r for r in fetched.to_pylist()}
    assert list(rows) == ["ok1", "ok2", "noquery", "badparam", "badseed"]
    assert fetched.schema == R.FETCHED_SCHEMA
    assert rows["ok1"]["status"] == R.OK and (rows["ok1"]["width"], rows["ok1"]["height"]) == (40, 24)
    assert (
        rows["ok1"]["seed"] == default_seed("ok1") and rows["ok1"]["guidance_scale"] == PARAMS.guidance_scale
    )
    assert rows["ok2"]["seed"] == 7 and rows["ok2"]["guidance_scale"] == 2.0 and rows["ok2"]["caption"] == ""
    assert rows["noquery"]["error"] == "query (the edit text) is empty"
    assert "num_mask_draws must be >= 1" in rows["badparam"]["error"]
    assert "seed must be in [0, 2**63 - 1]" in rows["badseed"]["error"]
    assert all(rows[k]["status"] == R.FAILED for k in ("noquery", "badparam", "badseed"))


@pytest.fixture(scope="module")
def editor() -> Iterator[DiffEditor]:
    # One torch thread: OpenMP's spinning threads make a busy 2-core machine dozens of times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield DiffEditor(tiny_bundle(0), PARAMS, max_batch=16)
    torch.set_num_threads(threads)


def test_edit_and_encode(fetched, editor):
    edited = edit_rows(fetched, editor, "models/tiny", "abc123")
    assert edited.schema == R.EDITED_SCHEMA
    rows = {r["id"]: r for r in edited.to_pylist()}
    assert rows["ok1"]["status"] == R.OK and len(rows["ok1"]["edited_pixels"]) == 40 * 24 * 3
    assert rows["ok1"]["unet_evals"] > 0 and rows["ok1"]["seconds_edit"] > 0
    assert rows["noquery"]["status"] == R.FAILED and rows["noquery"]["edited_pixels"] is None
    out = encode_rows(edited, run_id="run-1", version="0.1.0")
    assert out.schema == R.OUTPUT_SCHEMA
    rows = {r["id"]: r for r in out.to_pylist()}
    ok = rows["ok1"]
    assert ok["model"] == "models/tiny" and ok["model_weights_sha256"] == "abc123" and ok["run_id"] == "run-1"
    for column in R.IMAGE_COLUMNS:
        image = Image.open(io.BytesIO(ok[column]["bytes"]))
        assert image.format == "PNG" and image.size == (40, 24)
    mask = Image.open(io.BytesIO(ok["mask"]["bytes"]))
    assert mask.mode == "L" and set(mask.get_flattened_data()) <= {0, 255}
    assert 0.0 <= ok["mask_area"] <= 1.0
    assert rows["badseed"]["input_image"] is None and rows["badseed"]["error"]


def test_a_row_the_editor_cannot_edit_fails_alone(fetched, editor):
    class Flaky:
        """An editor whose batch call fails when row ok2 is in it."""

        def validate(self, request):
            editor.validate(request)

        def edit(self, requests):
            if any(r.id == "ok2" for r in requests):
                raise RuntimeError("CUDA out of memory (simulated)")
            return editor.edit(requests)

    rows = {r["id"]: r for r in edit_rows(fetched, Flaky(), "m", "h").to_pylist()}
    assert rows["ok1"]["status"] == R.OK
    assert rows["ok2"]["status"] == R.FAILED and "CUDA out of memory (simulated)" in rows["ok2"]["error"]


def test_input_sha256_is_the_pictures_hash_in_any_file_format():
    """README: ``input_sha256`` is the sha256 of the decoded pixels and their size, so the same picture
    has the same hash in PNG, TIFF or lossless WebP, with or without an opaque alpha channel; another
    picture, or the same bytes at another size, has another."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)

    def encoded(array: np.ndarray, fmt: str, mode: str = "RGB", **kw) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(array).convert(mode).save(buffer, format=fmt, **kw)
        return buffer.getvalue()

    def sha(data: bytes) -> str:
        row = prepare_row(
            {"id": "a", "image_bytes": data, "query": "q"}, PARAMS, ImagesConfig(), StorageConfig()
        )
        assert row["status"] == R.OK, row["error"]
        return row["input_sha256"]

    files = [encoded(pixels, "PNG"), encoded(pixels, "TIFF"), encoded(pixels, "TIFF", compression="tiff_lzw"),
             encoded(pixels, "WEBP", lossless=True), encoded(pixels, "PNG", mode="RGBA")]  # fmt: skip
    assert len(set(files)) == len(files)  # five different files ...
    assert {sha(f) for f in files} == {pixels_sha256(pixels.tobytes(), 40, 24)}  # ... one picture
    other = pixels.copy()
    other[0, 0, 0] ^= 1
    assert sha(encoded(other, "PNG")) != sha(files[0])
    assert sha(encoded(pixels.reshape(40, 24, 3), "PNG")) != sha(files[0])  # same bytes, 24 x 40

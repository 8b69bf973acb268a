"""How the output stores its images (issue 19 item 4): the input as its original bytes (default), as PNG
or by reference; the edit as PNG, WebP or JPEG; the mask always PNG. The stored input always shows the
pixels that were edited (an EXIF-rotated file is stored as PNG of its upright pixels), and a lossy edit
is part of the results identity while PNG, the old default, leaves earlier outputs' hash unchanged."""

from __future__ import annotations

import io
import re

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from diffedit.params import EditParams
from pipeline import output as O
from pipeline import rows as R
from pipeline.config import ConfigError, ImagesConfig, OutputConfig, StorageConfig, load_job
from pipeline.identity import ModelSource, results_hash, results_identity
from pipeline.stages import encode_rows, fetch_rows

MANIFEST = pa.schema([("id", pa.string()), ("image", pa.string()), ("image_bytes", pa.binary()),
                      ("query", pa.string())])  # fmt: skip


def picture(width: int = 24, height: int = 16) -> Image.Image:
    """A picture whose orientation shows: a red left half, a blue right half, a green top-left corner."""
    a = np.zeros((height, width, 3), np.uint8)
    a[:, : width // 2] = (200, 30, 30)
    a[:, width // 2 :] = (30, 30, 200)
    a[:4, :4] = (30, 200, 30)
    return Image.fromarray(a)


def file_bytes(image: Image.Image, fmt: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def run_stages(tmp_path, rows: list[dict], output: OutputConfig) -> list[dict]:
    """fetch_rows, then an identity 'edit' (the edited pixels are the input's; a half mask), then
    encode_rows: the two CPU stages of the job around the model."""
    table = pa.Table.from_pylist([{"image": None, "image_bytes": None, **r} for r in rows], schema=MANIFEST)
    images = ImagesConfig(allow=(str(tmp_path),))
    fetched = fetch_rows(table, params=EditParams(), images=images, storage=StorageConfig(),
                         input_image=output.input_image).to_pylist()  # fmt: skip
    for row in fetched:
        assert row["status"] == R.OK, row["error"]
        mask = np.zeros((row["height"], row["width"]), np.uint8)
        mask[:, : row["width"] // 2] = 255
        row.update(edited_pixels=row["pixels"], mask_pixels=mask.tobytes(), mask_area=0.5)
    edited = R.table_from_rows(fetched, R.EDITED_SCHEMA)
    return encode_rows(edited, run_id="r", version="v", output=output).to_pylist()


def decoded(struct: dict) -> Image.Image:
    return Image.open(io.BytesIO(struct["bytes"]))


def test_the_input_is_stored_as_its_original_bytes_by_default(tmp_path):
    jpeg = file_bytes(picture(), "JPEG", quality=80)
    webp = file_bytes(picture(), "WEBP", lossless=True)
    (tmp_path / "in.jpg").write_bytes(jpeg)
    rows = run_stages(tmp_path, [{"id": "uri", "image": str(tmp_path / "in.jpg"), "query": "q"},
                                 {"id": "inline", "image_bytes": webp, "query": "q"}],
                      OutputConfig(path="out"))  # fmt: skip
    by_id = {r["id"]: r for r in rows}
    assert OutputConfig(path="out").input_image == "original"
    assert by_id["uri"]["input_image"] == {"bytes": jpeg, "path": str(tmp_path / "in.jpg")}
    assert by_id["inline"]["input_image"] == {"bytes": webp, "path": None}
    # the default edit encoding is unchanged: PNG, the same bytes as before the option existed
    assert decoded(by_id["uri"]["edited_image"]).format == "PNG"


def test_png_and_reference_store_the_input_as_asked(tmp_path):
    jpeg = file_bytes(picture(), "JPEG", quality=80)
    (tmp_path / "in.jpg").write_bytes(jpeg)
    rows = [{"id": "uri", "image": str(tmp_path / "in.jpg"), "query": "q"},
            {"id": "inline", "image_bytes": jpeg, "query": "q"}]  # fmt: skip
    png = {r["id"]: r for r in run_stages(tmp_path, rows, OutputConfig(path="o", input_image="png"))}
    upright = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    for row in png.values():
        assert decoded(row["input_image"]).format == "PNG"
        assert np.array_equal(
            np.asarray(decoded(row["input_image"])), upright
        )  # lossless, the decoded pixels
    reference = {
        r["id"]: r for r in run_stages(tmp_path, rows, OutputConfig(path="o", input_image="reference"))
    }
    assert reference["uri"]["input_image"] == {"bytes": None, "path": str(tmp_path / "in.jpg")}
    assert reference["inline"]["input_image"] == {"bytes": jpeg, "path": None}  # no URI: its own bytes


@pytest.mark.parametrize("kind", ["exif-rotated JPEG", "TIFF"])
def test_an_input_whose_bytes_would_not_show_the_edited_pixels_is_stored_as_png(tmp_path, kind):
    """A file with an EXIF rotation shows, to a reader that ignores EXIF, another picture than the one
    that was edited (and ``width``/``height`` are the upright ones); a TIFF is not read everywhere. Both
    are stored as PNG of the upright pixels, under ``original`` as under ``reference`` for inline rows."""
    if kind == "TIFF":
        data = file_bytes(picture(), "TIFF")
    else:
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90° clockwise to display
        data = file_bytes(picture(), "JPEG", quality=95, exif=exif.tobytes())
    for mode in ("original", "reference"):
        (row,) = run_stages(tmp_path, [{"id": "x", "image_bytes": data, "query": "q"}],
                            OutputConfig(path="o", input_image=mode))  # fmt: skip
        stored = decoded(row["input_image"])
        assert stored.format == "PNG" and row["input_image"]["bytes"] != data
        assert stored.size == (row["width"], row["height"]) == decoded(row["edited_image"]).size
        expected = (16, 24) if kind != "TIFF" else (24, 16)  # the rotation applied
        assert stored.size == expected


@pytest.mark.parametrize("fmt", ["webp", "jpeg"])
def test_the_edit_can_be_webp_or_jpeg_and_the_mask_stays_exact_png(tmp_path, fmt):
    y, x = np.mgrid[0:96, 0:128]
    noise = np.random.default_rng(0).integers(-12, 13, (96, 128, 3))
    photo = np.clip(np.stack([x * 2, y * 2, 255 - x], -1) + noise, 0, 255).astype(np.uint8)  # photo-like
    source = file_bytes(Image.fromarray(photo), "PNG")
    output = OutputConfig(path="o", image_format=fmt, image_quality=90)
    (row,) = run_stages(tmp_path, [{"id": "x", "image_bytes": source, "query": "q"}], output)
    edit = decoded(row["edited_image"])
    assert edit.format == {"webp": "WEBP", "jpeg": "JPEG"}[fmt] and edit.size == (128, 96)
    error = np.abs(np.asarray(edit.convert("RGB"), np.int16) - photo.astype(np.int16))
    assert error.mean() < 6.0  # lossy, but close at quality 90
    (png,) = run_stages(tmp_path, [{"id": "x", "image_bytes": source, "query": "q"}], OutputConfig(path="o"))
    assert np.array_equal(np.asarray(decoded(png["edited_image"])), photo)  # PNG: exact
    assert len(row["edited_image"]["bytes"]) < len(png["edited_image"]["bytes"]) / 2  # why one chooses it
    mask = decoded(row["mask"])
    assert mask.format == "PNG" and set(np.unique(np.asarray(mask)).tolist()) == {0, 255}
    assert row["mask"] == png["mask"]  # the mask does not depend on the edit's format


def test_a_lossy_edit_is_another_configuration_and_png_keeps_earlier_hashes(tmp_path):
    job = tmp_path / "job.yaml"
    body = f"input: {{paths: [{tmp_path}/in]}}\nmodel: {{source: m}}\n"
    model = ModelSource(kind="local", location="m", revision=None, fingerprint={"kind": "weights", "w": "1"},
                        description="", family="sd", geometry=None)  # fmt: skip

    def identity(output: str) -> dict:
        job.write_text(body + f"output: {{path: {tmp_path}/out{output}}}\n")
        return results_identity(load_job(job, env={}), model)

    plain = identity("")
    assert "encoding" not in plain  # the key an output written before the option never had
    assert results_hash(
        identity(", image_format: png, image_quality: 50, input_image: reference")
    ) == results_hash(plain)
    webp = identity(", image_format: webp")
    assert webp["encoding"] == {"image_format": "webp", "image_quality": 90}
    assert results_hash(webp) != results_hash(plain)
    assert results_hash(identity(", image_format: webp, image_quality: 80")) != results_hash(webp)
    for bad, message in ((", image_format: gif", "output.image_format: must be one of ['png', 'webp', 'jpeg']"),
                         (", image_quality: 0", "output.image_quality must be in [1, 100], got 0")):  # fmt: skip
        with pytest.raises(ConfigError, match=re.escape(message)):
            identity(bad)


def test_datasets_reads_every_encoding_as_images(tmp_path):
    """The parts' Hugging Face Image features decode the original JPEG input, the WebP edit and the PNG
    mask alike, and open a referenced input from its local path."""
    import datasets
    import fsspec

    source = file_bytes(picture(), "JPEG", quality=80)
    (tmp_path / "in.jpg").write_bytes(source)
    rows = run_stages(tmp_path, [{"id": "inline", "image_bytes": source, "query": "q"}],
                      OutputConfig(path="o", image_format="webp"))  # fmt: skip
    rows += run_stages(tmp_path, [{"id": "referenced", "image": str(tmp_path / "in.jpg"), "query": "q"}],
                       OutputConfig(path="o", input_image="reference"))  # fmt: skip
    out = str(tmp_path / "out")
    full = [{**dict.fromkeys(R.OUTPUT_SCHEMA.names), **r} for r in rows]
    O.commit_table(fsspec.filesystem("file"), out, R.table_from_rows(full, R.OUTPUT_SCHEMA))
    loaded = datasets.load_dataset("parquet", data_dir=out, split="train", cache_dir=str(tmp_path / "hf"))
    by_id = {row["id"]: row for row in loaded}
    for row in by_id.values():
        assert row["input_image"].size == row["edited_image"].size == row["mask"].size == (24, 16)
        assert row["input_image"].format == "JPEG" and row["mask"].format == "PNG"
    assert by_id["inline"]["edited_image"].format == "WEBP"
    assert by_id["referenced"]["edited_image"].format == "PNG"


def test_preview_shows_a_local_reference_upright(tmp_path):
    """``preview`` draws a referenced input from its local file, EXIF rotation applied (as edited)."""
    from pipeline.preview import contact_sheet

    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "in.jpg").write_bytes(file_bytes(picture(), "JPEG", quality=95, exif=exif.tobytes()))
    source = [{"id": "x", "image": str(tmp_path / "in.jpg"), "query": "q"}]
    (row,) = run_stages(tmp_path, source, OutputConfig(path="o", input_image="reference"))
    (png,) = run_stages(tmp_path, source, OutputConfig(path="o", input_image="png"))
    assert row["input_image"]["bytes"] is None and (row["width"], row["height"]) == (16, 24)
    # the same sheet as with the upright pixels stored as PNG; not the one with an empty input box
    assert np.array_equal(np.asarray(contact_sheet([row])), np.asarray(contact_sheet([png])))
    missing = {**row, "input_image": None}
    assert not np.array_equal(np.asarray(contact_sheet([row])), np.asarray(contact_sheet([missing])))

"""The job's pixels are the library's (issue 21, item 1): the Ray job and ``DiffEditor`` on the same
rows, seeds, parameters and dtype give identical edited images and masks, whatever batch a row sits in
and whatever its size — with best-of-2 selection and every score on, so the kept candidate, its seed
and every candidate's scores must be the library's too. Statuses, sizes and counters alone would not notice a job that swapped images
between rows, dropped a per-row override or edited in another dtype."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from pipeline_testing import REPO, read_output, write_manifest
from typer.testing import CliRunner

from diffedit.editor import DiffEditor, EditRequest
from diffedit.loading import load_bundle
from diffedit.select import Selection
from pipeline.cli import app
from pipeline.config import load_job, scoring_of
from pipeline.keep import keep_verdict
from pipeline.manifest import default_seed
from pipeline.prepare import shapes_rows

MODEL = REPO / "models" / "shapes-v3"
#: Rows' sizes (width, height): three latent sizes, so the editor's buckets differ between rows.
SIZES = [(64, 64), (80, 48), (48, 96), (64, 64), (96, 96)]


def _resized(png: bytes, size: tuple[int, int]) -> bytes:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    buffer = io.BytesIO()
    image.resize(size, Image.Resampling.BICUBIC).save(buffer, format="PNG")
    return buffer.getvalue()


def _decoded(cell: dict, mode: str) -> bytes:
    return Image.open(io.BytesIO(cell["bytes"])).convert(mode).tobytes()


def test_the_job_edits_exactly_what_diffeditor_edits(ray_cluster, tmp_path, monkeypatch, torch_threads):
    rows = shapes_rows(len(SIZES), seed=7)
    for row, size in zip(rows, SIZES, strict=True):
        row["image_bytes"] = _resized(row["image_bytes"], size)
        row["seed"] = None  # derived from the id (sha256)
    rows[2]["seed"] = 12345  # an explicit seed
    rows[3]["encode_ratio"] = 0.5  # a per-row override
    for row in rows:
        row.setdefault("encode_ratio", None)
    write_manifest(tmp_path / "in" / "m.parquet", rows)
    # The CPU preset (bfloat16), batches of 2 rows in blocks of 2: the 5 rows are edited in 3 calls of
    # the model actor, with batch-mates that differ from the reference's (one row per call). With
    # group_window 4 the actor takes windows of 4 rows and edits them in chunks of one model resolution
    # (pipeline.grouping): other batch-mates again, each id still once.
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        "presets: [models/shapes-v3, compute/cpu]\n"
        f"input: {{paths: [in]}}\noutput: {{path: out, rows_per_file: 2}}\nmodel: {{source: '{MODEL}'}}\n"
        "params: {num_inference_steps: 4, num_mask_draws: 2}\n"
        "compute: {batch_size: 2, rows_per_block: 2, torch_threads: 1, group_window: 4}\n"
        "selection: {candidates: 2}\n"
    )
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", str(job_file), "--address", ray_cluster])
    assert result.exit_code == 0, result.output
    out = {r["id"]: r for r in read_output(tmp_path / "out").to_pylist()}
    assert sorted(out) == sorted(r["id"] for r in rows)

    job = load_job(job_file)
    assert job.compute.dtype == "bfloat16" and job.compute.device == "cpu"
    torch_threads(job.compute.torch_threads)  # the actor's thread count
    editor = DiffEditor(
        load_bundle(str(MODEL), dtype=job.compute.dtype),
        job.params,
        max_batch=16,
        scoring=scoring_of(job),
        selection=Selection(candidates=2, by=job.selection.by),
    )
    for row in rows:
        seed = default_seed(row["id"]) if row["seed"] is None else row["seed"]
        params = job.params if row["encode_ratio"] is None else job.params.replace(encode_ratio=0.5)
        image = Image.open(io.BytesIO(row["image_bytes"])).convert("RGB")
        expected = editor.edit(
            [EditRequest(image, query=row["query"], caption=row["caption"], seed=seed, params=params)]
        )[0]
        got = out[row["id"]]
        assert got["status"] == "ok", got["error"]
        assert (got["width"], got["height"]) == image.size
        assert got["seed"] == seed and got["encode_ratio"] == params.encode_ratio
        assert _decoded(got["input_image"], "RGB") == image.tobytes(), row["id"]
        assert _decoded(got["edited_image"], "RGB") == expected.image.convert("RGB").tobytes(), row["id"]
        assert _decoded(got["mask"], "L") == expected.mask_binary.convert("L").tobytes(), row["id"]
        assert got["mask_area"] == pytest.approx(expected.mask_area, abs=0)
        assert got["unet_evals"] == expected.counters["unet_evals"]
        assert got["candidate"] == expected.candidate and got["candidate_seed"] == expected.candidate_seed
        for name in scoring_of(job).names:
            assert got[f"score_{name}"] is not None, name
            assert got[f"score_{name}"] == pytest.approx(expected.scores[name], rel=1e-6, abs=1e-9), name
        assert [(c["candidate"], c["seed"]) for c in got["candidates"]] == [
            (c["candidate"], c["seed"]) for c in expected.candidates
        ]
        assert (got["keep"], got["reject_reason"]) == keep_verdict(got, job.filter)  # the preset's filter
    # the rows differ from each other, so a swap between rows could not pass
    edits = {_decoded(r["edited_image"], "RGB") for r in out.values()}
    assert len(edits) == len(rows)

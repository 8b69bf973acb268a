"""The whole job on Ray Data against a real S3-compatible server (moto, over HTTP): manifest, images,
model directory and output all on S3; good and bad rows mixed; output read back with plain pyarrow."""

from __future__ import annotations

import io
import json
import re

import pyarrow as pa
import pytest
from PIL import Image
from pipeline_testing import FAST_PARAMS, png_bytes, read_output, s3fs_for, upload_dir, write_manifest
from typer.testing import CliRunner

from pipeline import output as O
from pipeline import rows as R
from pipeline.cli import app

SCHEMA = pa.schema([("id", pa.string()), ("image", pa.string()), ("image_bytes", pa.binary()), ("caption", pa.string()),
                    ("query", pa.string()), ("seed", pa.int64()), ("guidance_scale", pa.float64())])  # fmt: skip

#: id -> (expected status, a fragment of the expected error)
EXPECTED = {
    "good-0": (R.OK, None),
    "good-1": (R.OK, None),
    "good-2": (R.OK, None),
    "wide": (R.OK, None),
    "inline": (R.OK, None),
    "override": (R.OK, None),
    "missing": (R.FAILED, "s3://test-bucket/images/missing.png not found"),
    "truncated": (R.FAILED, "cannot be decoded"),
    "garbage": (R.FAILED, "not a readable image"),
    "float-mode": (R.FAILED, "unsupported mode 'F'"),
    "oversized": (R.FAILED, "longer side is above images.max_side = 64"),
    "bomb": (R.FAILED, "above images.max_pixels = 3000 (decompression-bomb limit)"),
    "no-query": (R.FAILED, "query (the edit text) is empty"),
    "outside": (R.FAILED, "s3://test-bucket/private/x.png is not in the allow-list"),
}


def build_input(fs) -> None:
    img = "s3://test-bucket/images"
    for k in range(3):
        fs.pipe(f"test-bucket/images/good-{k}.png", png_bytes(k, (32, 32)))
    fs.pipe("test-bucket/images/wide.jpg", png_bytes(9, (48, 24), fmt="JPEG"))
    fs.pipe("test-bucket/images/truncated.png", png_bytes(3, (32, 32))[:400])
    fs.pipe("test-bucket/images/float.tiff", png_bytes(4, (8, 8), mode="F", fmt="TIFF"))
    fs.pipe("test-bucket/images/oversized.png", png_bytes(5, (100, 10)))
    fs.pipe("test-bucket/images/bomb.png", png_bytes(6, (60, 60), mode="L"))
    fs.pipe("test-bucket/private/x.png", png_bytes(7))
    q = {"caption": "a red circle", "query": "a blue circle"}
    first = [
        {"id": "good-0", "image": f"{img}/good-0.png", **q},
        {"id": "good-1", "image": f"{img}/good-1.png", **q, "caption": None},
        {"id": "good-2", "image": f"{img}/good-2.png", **q},
        {"id": "wide", "image": f"{img}/wide.jpg", **q},
        {"id": "inline", "image_bytes": png_bytes(8, (32, 32)), **q},
        {"id": "override", "image": f"{img}/good-0.png", **q, "seed": 3, "guidance_scale": 1.0},
        {"id": "missing", "image": f"{img}/missing.png", **q},
    ]
    second = [
        {"id": "truncated", "image": f"{img}/truncated.png", **q},
        {"id": "garbage", "image_bytes": b"GIF89a but not really", **q},
        {"id": "float-mode", "image": f"{img}/float.tiff", **q},
        {"id": "oversized", "image": f"{img}/oversized.png", **q},
        {"id": "bomb", "image": f"{img}/bomb.png", **q},
        {"id": "no-query", "image": f"{img}/good-1.png", "caption": "x", "query": ""},
        {"id": "outside", "image": "s3://test-bucket/private/x.png", **q},
    ]
    write_manifest("test-bucket/manifests/ds=2024-06-01/part-0.parquet", first, SCHEMA, fs=fs)
    write_manifest("test-bucket/manifests/ds=2024-06-01/part-1.parquet", second, SCHEMA, fs=fs)


JOB = """
name: s3-mixed
input: {paths: ["s3://test-bucket/manifests/"]}
output: {path: "s3://test-bucket/out/ds=${DS}/", rows_per_file: 3}
model: {source: "s3://test-bucket/models/tiny", cache_dir: "${CACHE}"}
params: {num_inference_steps: 8, num_mask_draws: 2}
compute: {batch_size: 4, rows_per_block: 5, torch_threads: 1}
storage: {endpoint_url: "${S3_ENDPOINT}"}
images: {allow: ["s3://test-bucket/images/"], max_side: 64, max_pixels: 3000}
failure: {max_failed_fraction: "${MAX_FAILED}"}
"""


def test_mixed_rows_on_s3_end_to_end(s3, ray_cluster, tiny_model, tmp_path, monkeypatch):
    assert FAST_PARAMS == {"num_inference_steps": 8, "num_mask_draws": 2}
    fs = s3fs_for(s3)
    upload_dir(fs, tiny_model, "test-bucket/models/tiny")
    build_input(fs)
    monkeypatch.setenv("S3_ENDPOINT", s3["endpoint_url"])
    monkeypatch.setenv("DS", "2024-06-01")
    monkeypatch.setenv("CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MAX_FAILED", "0.6")
    job = tmp_path / "job.yaml"
    job.write_text(JOB)
    runner = CliRunner()

    checked = runner.invoke(app, ["validate", str(job)])
    assert checked.exit_code == 0, checked.output
    assert "input: 14 rows in 2 file(s)" in checked.output
    assert "1 of 12 image URIs are outside images.allow" in checked.output
    assert "remote directory s3://test-bucket/models/tiny: Stable Diffusion layout OK" in checked.output

    result = runner.invoke(app, ["run", str(job)])
    assert result.exit_code == 0, result.output
    assert "succeeded: 6 ok, 8 failed" in result.output

    out = "test-bucket/out/ds=2024-06-01"
    fs.invalidate_cache()
    table = read_output(out, fs)
    assert table.schema.remove_metadata() == R.OUTPUT_SCHEMA
    rows = table.to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(EXPECTED)  # every input id, exactly once
    for row in rows:
        status, error = EXPECTED[row["id"]]
        assert row["status"] == status, (row["id"], row["error"])
        if status == R.FAILED:
            assert error in row["error"], (row["id"], row["error"])
            assert row["edited_image"] is None
            continue
        assert row["error"] is None
        size = (48, 24) if row["id"] == "wide" else (32, 32)
        assert (row["width"], row["height"]) == size
        for column in R.IMAGE_COLUMNS:
            assert Image.open(io.BytesIO(row[column]["bytes"])).size == size
        assert row["input_image"]["path"] in (None, f"s3://test-bucket/images/{row['id']}.png") or row[
            "id"
        ] in ("wide", "override")
        assert 0.0 <= row["mask_area"] <= 1.0
        assert row["model"] == "s3://test-bucket/models/tiny"
        assert re.fullmatch(r"[0-9a-f]{64}", row["model_weights_sha256"])
        assert row["num_inference_steps"] == 8 and row["num_mask_draws"] == 2
        assert row["unet_evals"] > 0 and row["seconds_edit"] > 0 and row["seconds_fetch"] >= 0
    by_id = {r["id"]: r for r in rows}
    assert by_id["override"]["seed"] == 3 and by_id["override"]["guidance_scale"] == 1.0
    assert by_id["good-0"]["guidance_scale"] == 7.5
    assert by_id["good-1"]["caption"] == ""
    # credentials never reach the output or its metadata
    written = fs.find(out) + fs.find(O.state_dir(out))  # the parts and the run's state
    assert any(f.endswith("/job.json") for f in written)
    assert b"testing" not in b"".join(fs.cat(f) for f in written)

    summary = json.loads(fs.cat(O.state(out, "summary.json")))
    assert summary["status"] == "succeeded"
    assert (
        summary["output"]["rows"] == 14 and summary["output"]["ok"] == 6 and summary["output"]["failed"] == 8
    )
    assert summary["this_run"]["rows_edited"] == 14 and summary["this_run"]["rows_per_second"] > 0
    assert summary["config_hash"] and summary["errors"]
    assert fs.exists(O.state(out, "_SUCCESS"))
    assert len([f for f in fs.ls(out, detail=False) if "/part-" in f]) == summary["output"]["parts"] >= 5

    # a rerun is a no-op that says so
    again = runner.invoke(app, ["run", str(job)])
    assert again.exit_code == 0, again.output
    assert "already complete: all 14 rows" in again.output

    # the failure policy: 8 of 14 failed is above 10% -> exit 4, no _SUCCESS (nothing re-edited)
    fs.rm(O.state(out, "_SUCCESS"))
    monkeypatch.setenv("MAX_FAILED", "0.1")
    strict = runner.invoke(app, ["run", str(job)])
    assert strict.exit_code == 4, strict.output
    assert "8 of 14 rows failed (57.1% > failure.max_failed_fraction 10.0%)" in strict.output
    fs.invalidate_cache()
    assert not fs.exists(O.state(out, "_SUCCESS"))
    assert json.loads(fs.cat(O.state(out, "summary.json")))["status"] == "failed_policy"
    assert sorted(read_output(out, fs).column("id").to_pylist()) == sorted(EXPECTED)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [{"id": "a", "image": "x", "query": "q"}, {"id": "a", "image": "y", "query": "q"}],
            "1 duplicate id(s): 'a'",
        ),
        ([{"id": "a", "query": "q"}], "needs an 'image' (URI) or 'image_bytes'"),
    ],
)
def test_unusable_input_exits_3_before_any_work(tmp_path, rows, message):
    write_manifest(tmp_path / "m.parquet", rows)
    job = tmp_path / "job.yaml"
    job.write_text(
        f"input: {{paths: [{tmp_path / 'm.parquet'}]}}\noutput: {{path: {tmp_path / 'out'}}}\nmodel: {{source: x/y}}\n"
    )
    for command in ("run", "validate"):
        result = CliRunner().invoke(app, [command, str(job)])
        assert result.exit_code == 3, result.output
        assert message in result.output
    assert not (tmp_path / "out").exists()


def test_config_errors_exit_2(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("input: {paths: [a]}\noutput: {path: b}\nmodel: {source: c}\ncompute: {actor: 2}\n")
    for command in ("run", "validate"):
        result = CliRunner().invoke(app, [command, str(job)])
        assert result.exit_code == 2
        assert f"{job}: compute: unknown key(s) ['actor']" in result.output
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "file not found" in result.output


def test_a_plan_that_would_deadlock_is_refused(ray_cluster, monkeypatch):
    """Two actors of one CPU on the 2-CPU cluster would leave the reads unscheduled for ever; only an
    autoscaler (here declared by $DIFFEDIT_AUTOSCALER) makes that a warning."""
    from pipeline.config import ConfigError, build_job
    from pipeline.job import check_resources

    base = {"input": {"paths": ["m"]}, "output": {"path": "o"}, "model": {"source": "x/y"}}
    check_resources(build_job({**base, "compute": {"actors": 1, "cpus_per_actor": 1}}))
    check_resources(build_job({**base, "compute": {"actors": 2, "cpus_per_actor": 0.5}}))
    for compute in (
        {"actors": 2, "cpus_per_actor": 1},
        {"actors": [1, 2]},
        {"actors": 1, "cpus_per_actor": 1.5},
    ):
        job = build_job({**base, "compute": compute})
        monkeypatch.delenv("DIFFEDIT_AUTOSCALER", raising=False)
        with pytest.raises(ConfigError, match=r"Ray issue 44687"):
            check_resources(job)
        monkeypatch.setenv("DIFFEDIT_AUTOSCALER", "yes")
        assert "the autoscaler may add nodes" in check_resources(job).warnings[0]

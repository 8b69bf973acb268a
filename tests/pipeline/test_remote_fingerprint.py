"""The results identity of a model in object storage (README "Results identity"; issue 21 item 5): its
fingerprint is the listing (path, size, ETag) of the files a pipeline loads, taken without downloading a
weight, so new weights under the same URL are another configuration; and the same weights reached
through another kind of source (a local copy, then the S3 one) are refused as another configuration
(exit 3) rather than mixed into one output. No Ray: every row is committed by hand."""

from __future__ import annotations

import json

import fsspec
from pipeline_testing import png_bytes, s3fs_for, state_file, upload_dir, write_manifest
from typer.testing import CliRunner

from pipeline import output as O
from pipeline import rows as R
from pipeline.cli import app
from pipeline.config import load_job
from pipeline.identity import inspect_model, results_hash, results_identity

IDS = ["a", "b"]


def _job(root, source: str, endpoint: str) -> None:
    (root / "job.yaml").write_text(
        f"input: {{paths: [in]}}\noutput: {{path: out, rows_per_file: 1}}\n"
        f"model: {{source: '{source}', cache_dir: cache}}\nstorage: {{endpoint_url: '{endpoint}'}}\n"
    )


def test_a_remote_model_is_its_listing_and_another_source_is_another_configuration(
    s3, tiny_model, tmp_path, monkeypatch
):
    fs = s3fs_for(s3)
    upload_dir(fs, tiny_model, "test-bucket/models/tiny")
    remote = "s3://test-bucket/models/tiny"
    monkeypatch.chdir(tmp_path)
    write_manifest(tmp_path / "in" / "m.parquet",
                   [{"id": i, "image_bytes": png_bytes(n), "query": "a blue circle"} for n, i in enumerate(IDS)])  # fmt: skip
    local = fsspec.filesystem("file")
    for i in IDS:
        rows = [{"id": i, "status": R.OK, "run_id": "old"}]
        O.commit_table(local, str(tmp_path / "out"), R.table_from_rows(rows, R.OUTPUT_SCHEMA))

    # 1. the fingerprint: every file a pipeline loads, with its size and ETag; no weight downloaded
    _job(tmp_path, remote, s3["endpoint_url"])
    job = load_job(tmp_path / "job.yaml")
    source = inspect_model(job)
    assert source.kind == "remote" and source.fingerprint["kind"] == "listing"
    files = {rel: (size, etag) for rel, size, etag in source.fingerprint["files"]}
    assert "unet/diffusion_pytorch_model.safetensors" in files and "model_index.json" in files
    for rel, (size, etag) in files.items():
        info = fs.info(f"test-bucket/models/tiny/{rel}")
        assert size == info["size"] and etag == info["ETag"], rel  # the ETag as S3 gives it
    before = results_hash(results_identity(job, source))

    # new weights under the same URL: another ETag, another results hash
    unet = "test-bucket/models/tiny/unet/diffusion_pytorch_model.safetensors"
    fs.pipe(unet, fs.cat(unet) + b"\0")
    fs.invalidate_cache()
    assert results_hash(results_identity(job, inspect_model(job))) != before
    upload_dir(fs, tiny_model, "test-bucket/models/tiny")  # the original weights back
    fs.invalidate_cache()
    assert results_hash(results_identity(job, inspect_model(job))) == before  # by content, not by time

    # 2. an output made with the local copy of the same weights ...
    _job(tmp_path, str(tiny_model), s3["endpoint_url"])
    done = CliRunner().invoke(app, ["run", "job.yaml"])  # every id committed: completes without Ray
    assert done.exit_code == 0, done.output
    identity = json.loads(state_file(tmp_path / "out", O.JOB_FILE).read_text())["results_identity"]
    assert identity["model"]["kind"] != "listing"
    # ... is refused when the job names the S3 copy: another configuration, exit 3, nothing written
    _job(tmp_path, remote, s3["endpoint_url"])
    for command in ("validate", "run"):
        refused = CliRunner().invoke(app, [command, "job.yaml"])
        assert refused.exit_code == 3, (command, refused.output)
        assert "differs in: model" in refused.output, refused.output
    assert json.loads(state_file(tmp_path / "out", O.JOB_FILE).read_text())["results_identity"] == identity
    # fingerprinting, validating and refusing never downloaded a weight file (the model cache is empty)
    assert not list(tmp_path.rglob("*.safetensors"))

"""The command line with typer's CliRunner: the demo job as `make demo` runs it (a tiny model standing
in for the bundled one), and the COCO job validated against a fixture manifest on S3."""

from __future__ import annotations

import json
import shutil

import yaml
from PIL import Image
from pipeline_testing import COCO, REPO, read_output, s3fs_for, state_file, upload_dir
from typer.testing import CliRunner

from diffedit.params import EditParams
from pipeline.cli import app
from pipeline.plan import GIB, ClusterDescription, Node


def test_demo_job_prepare_run_preview(ray_cluster, tiny_model, tmp_path, monkeypatch):
    """`make demo`'s three commands, from a working directory laid out like the repository."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model, tmp_path / "models" / "shapes-v3")
    runner = CliRunner()
    job = str(REPO / "jobs" / "shapes_recolor.yaml")

    prepared = runner.invoke(app, ["prepare", "shapes", "--out", "data/shapes_manifest", "--rows", "4"])
    assert prepared.exit_code == 0, prepared.output
    checked = runner.invoke(app, ["validate", job])
    assert checked.exit_code == 0, checked.output
    assert "input: 4 rows in 1 file(s)" in checked.output and "Stable Diffusion layout OK" in checked.output

    result = runner.invoke(app, ["run", job])
    assert result.exit_code == 0, result.output
    assert "succeeded: 4 ok, 0 failed" in result.output
    assert "throughput" in result.output and "config hash" in result.output  # the summary table
    table = read_output(tmp_path / "out" / "shapes_recolor")
    assert table.num_rows == 4 and set(table.column("status").to_pylist()) == {"ok"}
    # every parameter the shapes-v3 preset sets is in the rows, where it differs from the library's default
    preset = yaml.safe_load((REPO / "configs" / "models" / "shapes-v3.yaml").read_text())["params"]
    for key, value in preset.items():
        assert table.column(key).to_pylist() == [value] * 4, key
    assert any(value != getattr(EditParams(), key) for key, value in preset.items())
    assert state_file(tmp_path / "out" / "shapes_recolor", "_SUCCESS").exists()

    again = runner.invoke(app, ["run", job])
    assert again.exit_code == 0 and "already complete" in again.output

    shown = runner.invoke(app, ["preview", "out/shapes_recolor", "--out", "out/preview.png", "--rows", "3"])
    assert shown.exit_code == 0, shown.output
    sheet = Image.open(tmp_path / "out" / "preview.png")
    assert sheet.width == 3 * 160 + 16 and sheet.height > 3 * 160

    missing = runner.invoke(app, ["preview", "out/nothing", "--out", "x.png"])
    assert missing.exit_code == 3 and "no output parts" in missing.output


def test_coco_job_validates_against_a_fixture_manifest_on_s3(s3, tiny_model, tmp_path, monkeypatch):
    fs = s3fs_for(s3)
    fs.mkdir("model-bucket")
    upload_dir(fs, tiny_model, "model-bucket/models/stable-diffusion-v1-5")
    fs.pipe("test-bucket/coco/annotations/captions_val2017.json", json.dumps(COCO).encode())
    for image in COCO["images"]:
        fs.pipe(f"test-bucket/coco/train2017/{image['file_name']}", b"jpeg bytes would be here")
    endpoint = s3["endpoint_url"]
    runner = CliRunner()
    prepared = runner.invoke(
        app,
        ["prepare", "coco-recolor", "--captions", "s3://test-bucket/coco/annotations/captions_val2017.json",
         "--images", "s3://test-bucket/coco/train2017/", "--out", "s3://test-bucket/diffedit/manifests/coco_recolor/",
         "--endpoint-url", endpoint],
    )  # fmt: skip
    assert prepared.exit_code == 0, prepared.output
    assert "4 with a colour word, 5 without (left out); 0 with an image id missing" in prepared.output
    assert "wrote 3 rows" in prepared.output

    for name, value in {"DATA_BUCKET": "test-bucket", "MODEL_BUCKET": "model-bucket", "DS": "2024-06-01",
                        "S3_ENDPOINT_URL": endpoint}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    # The job is sized for a GPU cluster (compute/gpu): validate its plan as on one (pipeline.plan's
    # own tests cover the check; validating it against this CPU machine fails with exit 2).
    gpu_cluster = ClusterDescription(nodes=(Node(16, 1, 64 * GIB),) * 2, where="a GPU cluster")
    monkeypatch.setattr("pipeline.cluster.local_cluster", lambda: gpu_cluster)
    monkeypatch.setattr("pipeline.cluster.connected_cluster", lambda: gpu_cluster)
    result = runner.invoke(app, ["validate", str(REPO / "jobs" / "coco_recolor.yaml")])
    assert result.exit_code == 0, result.output
    assert "compute: plan: 1-8 actor(s) of 2 CPU, 1 GPU, 0 GiB; 2 fit now" in result.output
    assert "input: 3 rows in 1 file(s), ids unique" in result.output
    assert "all 3 image URIs are inside images.allow" in result.output
    assert (
        "remote directory s3://model-bucket/models/stable-diffusion-v1-5/: Stable Diffusion layout OK"
        in result.output
    )
    assert "output s3://test-bucket/diffedit/outputs/coco_recolor/ds=2024-06-01/: empty" in result.output
    assert "testing" not in result.output  # no credentials echoed

    fs.rm("model-bucket/models/stable-diffusion-v1-5/unet", recursive=True)
    broken = runner.invoke(app, ["validate", str(REPO / "jobs" / "coco_recolor.yaml")])
    assert broken.exit_code == 2
    assert "coco_recolor.yaml: model.source s3://model-bucket/models/stable-diffusion-v1-5/" in broken.output
    assert "unet/ missing" in broken.output

    monkeypatch.delenv("DS")
    unset = runner.invoke(app, ["validate", str(REPO / "jobs" / "coco_recolor.yaml")])
    assert unset.exit_code == 2 and "output.path: environment variable DS is not set" in unset.output
    _ = read_output  # the output of a validated job is empty: nothing to read

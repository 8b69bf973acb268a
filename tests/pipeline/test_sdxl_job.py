"""SDXL through the batch job: the models/sdxl preset validates against a tiny SDXL directory, and the
Ray job edits with a tiny SDXL model loaded by hub id from an offline hub cache (HF_HUB_OFFLINE=1,
HF_HUB_CACHE), the driver's hub settings reaching the model actors."""

from __future__ import annotations

import json

import pytest
from pipeline_testing import png_bytes, read_output, state_file, write_manifest
from typer.testing import CliRunner

from diffedit.loading import load_bundle
from diffedit.tiny import save_hub_snapshot, save_tiny_sdxl_model
from pipeline.cli import app


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    return save_tiny_sdxl_model(tmp_path_factory.mktemp("models") / "tiny-sdxl")


def job_yaml(tmp_path, source: str, revision: str | None = None) -> str:
    pin = f', revision: "{revision}"' if revision else ""
    return f"""
name: sdxl
presets: [models/sdxl, compute/cpu]
input: {{paths: ["{tmp_path / "manifest"}"]}}
output: {{path: "{tmp_path / "out"}"}}
model: {{source: "{source}"{pin}}}
params: {{num_inference_steps: 8, num_mask_draws: 2}}
compute: {{batch_size: 2, torch_threads: 1}}
"""


def test_sdxl_preset_validates_against_a_tiny_sdxl_directory(tiny_sdxl, tmp_path):
    write_manifest(tmp_path / "manifest" / "part-0.parquet",
                   [{"id": "a", "image_bytes": png_bytes(0), "caption": "a cat", "query": "a red cat"}])  # fmt: skip
    job = tmp_path / "job.yaml"
    job.write_text(job_yaml(tmp_path, str(tiny_sdxl)))
    result = CliRunner().invoke(app, ["validate", str(job)])
    assert result.exit_code == 0, result.output
    assert (
        f"local directory {tiny_sdxl}: Stable Diffusion XL layout OK (4 safetensors file(s), weights sha256"
        in result.output
    )

    (tiny_sdxl.parent / "broken").mkdir()
    broken = tiny_sdxl.parent / "broken" / "model"
    broken.mkdir()
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "tokenizer_2", "scheduler"):
        (broken / sub).symlink_to(tiny_sdxl / sub)
    (broken / "model_index.json").write_text((tiny_sdxl / "model_index.json").read_text())
    job.write_text(job_yaml(tmp_path, str(broken)))
    result = CliRunner().invoke(app, ["validate", str(job)])
    assert result.exit_code == 2 and "text_encoder_2/ missing" in result.output


def test_ray_job_edits_with_tiny_sdxl_loaded_by_hub_id_offline(ray_cluster, tiny_sdxl, tmp_path, monkeypatch):
    """By hub id pinned to a commit, while main points at another model: the pin is what loads."""
    cache = tmp_path / "hf-cache"
    commit = save_hub_snapshot(tiny_sdxl, cache, "org/tiny-sdxl")
    other = save_tiny_sdxl_model(tmp_path / "other", seed=1)
    assert save_hub_snapshot(other, cache, "org/tiny-sdxl") != commit  # main moves on
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    rows = [
        {"id": f"r{i}", "image_bytes": png_bytes(i, size=size), "caption": "a blue cat", "query": "a red cat"}
        for i, size in enumerate([(32, 32), (48, 40), (64, 64)])
    ]
    write_manifest(tmp_path / "manifest" / "part-0.parquet", rows)
    job = tmp_path / "job.yaml"
    job.write_text(job_yaml(tmp_path, "hf://org/tiny-sdxl", revision=commit))

    result = CliRunner().invoke(app, ["run", str(job), "--address", ray_cluster])
    assert result.exit_code == 0, result.output
    assert "succeeded: 3 ok, 0 failed" in result.output
    table = read_output(tmp_path / "out")
    assert sorted(table.column("id").to_pylist()) == ["r0", "r1", "r2"]
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert set(table.column("model").to_pylist()) == {"hf://org/tiny-sdxl"}  # as written
    assert set(table.column("model_weights_sha256").to_pylist()) == {load_bundle(str(tiny_sdxl)).weights_hash}
    assert set(table.column("guidance_scale").to_pylist()) == {5.0}  # from the sdxl preset
    summary = json.loads(state_file(tmp_path / "out", "summary.json").read_text())
    assert summary["this_run"]["rows_edited"] == 3


def test_model_actors_get_the_drivers_hub_settings_but_no_token(monkeypatch):
    from pipeline.job import actor_env

    for name in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    assert "HF_HUB_OFFLINE" not in actor_env()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", "/models/hf")
    monkeypatch.setenv("HF_HOME", "/models/home")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    env = actor_env()
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_HUB_CACHE"] == "/models/hf"
    assert env["HF_HOME"] == "/models/home"
    assert "HF_TOKEN" not in env and "hf_secret" not in env.values()


def test_sdxl_example_job_loads():
    from pipeline_testing import REPO

    from pipeline.config import load_job
    from pipeline.sizing import Geometry, batching

    env = {"DATA_BUCKET": "data", "MODEL_BUCKET": "models", "DS": "2024-06-01"}
    job = load_job(REPO / "jobs" / "sdxl_recolor.yaml", env=env)
    assert job.model.source == "s3://models/models/stable-diffusion-xl-base-1.0/"
    assert job.params.guidance_scale == 5.0 and job.params.num_inference_steps == 50  # the sdxl preset
    assert job.compute.device == "cuda" and job.compute.dtype == "float16" and job.compute.max_batch is None
    # the batch sizes come from the per-family plan (pipeline.sizing): SDXL at 1024 px
    plan = batching(job.compute, Geometry("sdxl", 1024, 64))
    assert (plan.batch_size, plan.max_batch, plan.vae_batch, plan.group_window) == (8, 16, 4, 384)
    assert job.output.path == "s3://data/diffedit/outputs/sdxl_recolor/ds=2024-06-01/"

"""SD3 and FLUX.1 through the batch job: directories written by ``python -m diffedit.tiny`` validate
against the presets (the layout recognised and named) and edit through ``diffedit-batch run`` on a local
Ray, the rows' family recorded; the family is part of the results identity. The same for the bundled
flow-trained UNet, models/shapes-v3-flow, with its preset."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pipeline_testing import REPO, png_bytes, read_output, state_file, write_manifest
from typer.testing import CliRunner

from pipeline.cli import app


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """The command users run: python -m diffedit.tiny --family F --out DIR."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    for family in ("sd3", "flux"):
        done = subprocess.run(
            [sys.executable, "-m", "diffedit.tiny", "--family", family, "--out", str(root / family)],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert (root / family / "model_index.json").exists()
        assert (root / family / "transformer" / "diffusion_pytorch_model.safetensors").exists()
        out[family] = root / family
    return out


PRESETS = {"sd3": "models/sd35-medium", "flux": "models/flux-dev", "shapes-flow": "models/shapes-v3-flow"}
NAMES = {
    "sd3": "Stable Diffusion 3",
    "flux": "FLUX.1",
    "shapes-flow": "Stable Diffusion, rectified-flow UNet",
}
FAMILIES = ["sd3", "flux", "shapes-flow"]


def model_dir(tiny_dirs, family: str):
    return tiny_dirs.get(family, REPO / "models" / "shapes-v3-flow")


def job_yaml(tmp_path, family: str, source: str) -> str:
    return f"""
name: {family}
presets: [{PRESETS[family]}, compute/cpu]
input: {{paths: ["{tmp_path / "manifest"}"]}}
output: {{path: "{tmp_path / "out"}"}}
model: {{source: "{source}"}}
params: {{num_inference_steps: 6, num_mask_draws: 2}}
compute: {{batch_size: 2, torch_threads: 1}}
"""


@pytest.mark.parametrize("family", FAMILIES)
def test_flow_presets_validate_against_tiny_directories(tiny_dirs, tmp_path, family):
    write_manifest(tmp_path / "manifest" / "part-0.parquet",
                   [{"id": "a", "image_bytes": png_bytes(0), "caption": "a cat", "query": "a red cat"}])  # fmt: skip
    job = tmp_path / "job.yaml"
    job.write_text(job_yaml(tmp_path, family, str(model_dir(tiny_dirs, family))))
    result = CliRunner().invoke(app, ["validate", str(job)])
    assert result.exit_code == 0, result.output
    weights = {"sd3": 5, "flux": 4, "shapes-flow": 3}[family]  # transformer/unet, vae, CLIP(s), T5
    assert (
        f"local directory {model_dir(tiny_dirs, family)}: {NAMES[family]} layout OK ({weights} safetensors file(s)"
        in result.output
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_ray_job_edits_with_tiny_flow_models(ray_cluster, tiny_dirs, tmp_path, monkeypatch, family):
    monkeypatch.chdir(tmp_path)
    rows = [
        {"id": f"r{i}", "image_bytes": png_bytes(i, size=size), "caption": "a blue cat", "query": "a red cat"}
        for i, size in enumerate([(32, 32), (48, 40), (40, 64)])
    ]
    write_manifest(tmp_path / "manifest" / "part-0.parquet", rows)
    job = tmp_path / "job.yaml"
    job.write_text(job_yaml(tmp_path, family, str(model_dir(tiny_dirs, family))))
    result = CliRunner().invoke(app, ["run", str(job), "--address", ray_cluster])
    assert result.exit_code == 0, result.output
    assert "succeeded: 3 ok, 0 failed" in result.output
    table = read_output(tmp_path / "out")
    assert sorted(table.column("id").to_pylist()) == ["r0", "r1", "r2"]
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert set(table.column("model_family").to_pylist()) == {"sd" if family == "shapes-flow" else family}
    evals = table.column("unet_evals").to_pylist()
    # mask 2 x 2 draws + encode floor(0.8 x 6) = 4 + decode 4 (x2 with CFG: SD3's 4.5, the shapes model's 5;
    # FLUX-dev: 1) + the alignment score's 2 levels x 2 texts on the input and on the edit (diffedit.scores)
    assert set(evals) == {4 + 4 + (4 if family == "flux" else 8) + 8}
    job_json = json.loads(state_file(tmp_path / "out", "job.json").read_text())
    assert job_json["results_identity"]["family"] == NAMES[family]

"""Issue 20, item 8: the model of the demo ships with the package; ``diffedit-batch prepare model``
puts it where the preset looks (``models/shapes-v3`` under the working directory), so the demo runs
from a wheel install without a checkout."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from pipeline_testing import REPO, installed_wheel
from typer.testing import CliRunner

from pipeline.cli import app

MODEL_FILES = sorted(
    p.relative_to(REPO / "models" / "shapes-v3").as_posix()
    for pattern in ("model_index.json", "*/*.json", "*/*.safetensors")
    for p in (REPO / "models" / "shapes-v3").glob(pattern)
)


def test_prepare_model_copies_the_bundled_model_where_the_preset_looks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["prepare", "model"])
    assert result.exit_code == 0, result.output
    copied = sorted(p.relative_to(tmp_path / "models" / "shapes-v3").as_posix()
                    for p in (tmp_path / "models" / "shapes-v3").rglob("*") if p.is_file())  # fmt: skip
    assert copied == MODEL_FILES and "unet/diffusion_pytorch_model.safetensors" in copied
    for name in copied:
        assert (tmp_path / "models" / "shapes-v3" / name).read_bytes() == (
            REPO / "models" / "shapes-v3" / name
        ).read_bytes()
    again = runner.invoke(app, ["prepare", "model"])
    assert again.exit_code == 0 and "already there" in again.output
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("x")
    refused = runner.invoke(app, ["prepare", "model", "--out", "other"])
    assert refused.exit_code == 2 and "holds other files" in refused.output
    # the demo job then validates here, with no checkout: the preset's models/shapes-v3 is found
    shutil.copytree(REPO / "jobs", tmp_path / "jobs")
    assert (
        runner.invoke(app, ["prepare", "shapes", "--out", "data/shapes_manifest", "--rows", "2"]).exit_code
        == 0
    )
    checked = runner.invoke(app, ["validate", "jobs/shapes_recolor.yaml"])
    assert checked.exit_code == 0, checked.output


@pytest.mark.slow  # builds and installs a wheel (~1-2 min)
def test_the_wheel_runs_the_demo_preflight_without_a_checkout(tmp_path):
    venv, env = installed_wheel(REPO, tmp_path)
    empty = tmp_path / "empty"  # no checkout: only the job file
    (empty / "jobs").mkdir(parents=True)
    shutil.copy(REPO / "jobs" / "shapes_recolor.yaml", empty / "jobs")
    exe = str(venv / "bin" / "diffedit-batch")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([exe, *args], cwd=empty, env=env, capture_output=True, text=True, timeout=300)

    assert run("prepare", "shapes", "--out", "data/shapes_manifest", "--rows", "2").returncode == 0
    before = run("validate", "jobs/shapes_recolor.yaml")
    assert before.returncode == 2 and "models/shapes-v3" in before.stderr, before.stderr  # not there yet
    got = run("prepare", "model")
    assert got.returncode == 0, got.stdout + got.stderr
    checked = run("validate", "jobs/shapes_recolor.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Stable Diffusion layout OK" in checked.stdout

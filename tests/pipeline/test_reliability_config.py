"""Issue 20, item 4: a key written twice in a job file or preset is a configuration error (exit 2)
naming the file and the key, not a silent choice of the last copy."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import ConfigError, load_job


def job_text(tmp_path: Path, extra: str = "") -> str:
    return (
        f"input: {{paths: ['{tmp_path / 'in'}']}}\n"
        f"output:\n  path: '{tmp_path / 'out-a'}'\n"
        f"model: {{source: '{tmp_path}'}}\n" + extra
    )


def test_two_output_blocks_are_refused_naming_the_file_and_key(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(job_text(tmp_path, f"output:\n  path: '{tmp_path / 'out-b'}'\n"))
    with pytest.raises(ConfigError, match=r"job\.yaml: output: duplicate key \(line 5; first at line 2\)"):
        load_job(job)
    result = CliRunner().invoke(app, ["validate", str(job)])
    assert result.exit_code == 2, result.output
    assert f"{job}: output: duplicate key" in result.output


def test_a_nested_duplicate_names_the_dotted_key(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(job_text(tmp_path, "compute:\n  batch_size: 1\n  io_cpus: 0.5\n  batch_size: 2\n"))
    with pytest.raises(ConfigError, match=r"compute\.batch_size: duplicate key \(line 8; first at line 6\)"):
        load_job(job)
    job.write_text(job_text(tmp_path, "params: {num_inference_steps: 5, num_inference_steps: 9}\n"))
    with pytest.raises(ConfigError, match=r"params\.num_inference_steps: duplicate key"):
        load_job(job)


def test_a_duplicate_in_a_preset_names_the_preset(tmp_path):
    preset = tmp_path / "fast.yaml"
    preset.write_text("compute:\n  batch_size: 1\ncompute:\n  batch_size: 2\n")
    job = tmp_path / "job.yaml"
    job.write_text("presets: [fast.yaml]\n" + job_text(tmp_path))
    with pytest.raises(ConfigError, match=r"fast\.yaml: compute: duplicate key \(line 3; first at line 1\)"):
        load_job(job)


def test_the_same_key_in_different_mappings_is_fine(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(job_text(tmp_path, "name: x\ncompute: {batch_size: 2}\nstorage: {region: eu}\n"))
    loaded = load_job(job)
    assert loaded.output.path == str(tmp_path / "out-a")
    assert loaded.compute.batch_size == 2

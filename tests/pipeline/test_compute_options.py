"""compute.channels_last and compute.compile_unet (issue 11): typed, strict, off by default, applied by
the model stage; and the CPU preset loads with the settings the precision benchmark chose."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.config import ComputeConfig, ConfigError, build_job, load_job

REPO = Path(__file__).resolve().parents[2]


def _job(tmp_path, model: str, **compute):
    return build_job(
        {
            "name": "t",
            "input": {"paths": [str(tmp_path / "in")]},
            "output": {"path": str(tmp_path / "out")},
            "model": {"source": model},
            "compute": {"actors": 1, "cpus_per_actor": 1, "torch_threads": 1, **compute},
        },
        source="test.yaml",
    )


def test_defaults_off_and_strict_types(tmp_path):
    assert ComputeConfig().channels_last is False and ComputeConfig().compile_unet is False
    job = _job(tmp_path, "models/shapes-v3", channels_last=True, compile_unet=False)
    assert job.compute.channels_last is True and job.compute.compile_unet is False
    with pytest.raises(ConfigError, match="channels_last"):
        _job(tmp_path, "models/shapes-v3", channels_last="yes")


def test_model_stage_applies_channels_last(tmp_path):
    from diffedit.tiny import save_tiny_model
    from pipeline.stages import EditStage

    model = save_tiny_model(tmp_path / "tiny", seed=0)
    before = torch.get_num_threads()
    try:
        plain = EditStage(_job(tmp_path, str(model)))
        nhwc = EditStage(_job(tmp_path, str(model), channels_last=True))
    finally:
        torch.set_num_threads(before)
    assert not plain.bundle.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert nhwc.bundle.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert nhwc.bundle.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def test_cpu_preset_loads(tmp_path):
    job = load_job(REPO / "jobs" / "shapes_recolor.yaml", env={})
    c = job.compute
    # the precision benchmark's choice (configs/compute/cpu.yaml): bfloat16, no channels_last, no compile
    assert (c.device, c.dtype, c.channels_last, c.compile_unet) == ("cpu", "bfloat16", False, False)

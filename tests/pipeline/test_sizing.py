"""Batch sizes from the per-family plan (pipeline.sizing): the job's compute keys, typed and strict; the
plan's values where the job sets none, the job's where it does; the values reaching the editor and the
VAE options reaching the bundle; the model's geometry read from its configs without loading it."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import ComputeConfig, ConfigError, build_job
from pipeline.sizing import CPU_SHAPE, GROUP_BATCHES, PLAN, Geometry, batching, geometry_from_configs

SD15, SD21, SDXL = Geometry("sd", 512, 64), Geometry("sd", 768, 64), Geometry("sdxl", 1024, 64)


def _job(tmp_path, model: str = "models/shapes-v3", **compute):
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


def _cuda(**compute) -> ComputeConfig:
    return ComputeConfig(device="cuda", gpus_per_actor=1, **compute)


def test_compute_keys_parse_typed_and_strict(tmp_path):
    c = _job(tmp_path, vae_batch=4, vae_tiling=True, vae_slicing=True, group_window=64, batch_size=8).compute
    assert (c.vae_batch, c.vae_tiling, c.vae_slicing, c.group_window, c.batch_size) == (4, True, True, 64, 8)
    unset = _job(tmp_path).compute
    assert (unset.batch_size, unset.max_batch, unset.vae_batch, unset.group_window) == (None,) * 4
    assert (unset.vae_tiling, unset.vae_slicing) == (False, False)
    for key, value, message in [
        ("vae_batch", 0, "compute.vae_batch must be >= 1, got 0"),
        ("vae_batch", "four", "compute.vae_batch: expected an integer or null, got string 'four'"),
        ("vae_tiling", "yes", "compute.vae_tiling: expected true or false"),
        ("vae_slicing", 1, "compute.vae_slicing: expected true or false"),
        ("group_window", -1, "compute.group_window must be >= 0 (0: off), got -1"),
        ("max_batch", 0, "compute.max_batch must be >= 1, got 0"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            _job(tmp_path, **{key: value})
    with pytest.raises(
        ConfigError, match=r"compute.group_window must be 0 \(off\) or >= compute.batch_size \(8\)"
    ):
        _job(tmp_path, batch_size=8, group_window=5)


def test_the_plan_fills_what_the_job_leaves_unset():
    sd = batching(_cuda(), SD15)
    assert (sd.batch_size, sd.max_batch, sd.vae_batch) == (32, 64, 16)
    assert sd.group_window == GROUP_BATCHES * 32 and "plan sd@512px cuda" in sd.origin
    xl = batching(_cuda(), SDXL)
    assert (xl.batch_size, xl.max_batch, xl.vae_batch, xl.group_window) == (8, 16, 4, 8 * GROUP_BATCHES)
    v2 = batching(_cuda(), SD21)
    assert (v2.batch_size, v2.max_batch, v2.vae_batch) == (16, 32, 8)
    # decode evaluates 2 samples per row (CFG): a bucket of batch_size rows fills one UNet call; FLUX.1-dev
    # (distilled guidance, no CFG) evaluates 1
    for (family, _), shape in PLAN.items():
        per_row = 1 if family == "flux" else 2
        assert shape.max_batch == per_row * shape.batch_size and shape.vae_batch <= shape.max_batch


def test_explicit_values_win_and_are_named():
    plan = batching(_cuda(max_batch=48, group_window=0), SD15)
    assert (plan.batch_size, plan.max_batch, plan.vae_batch, plan.group_window) == (32, 48, 16, 0)
    assert "compute.max_batch, compute.group_window from the job" in plan.origin
    assert batching(_cuda(vae_batch=2), SDXL).vae_batch == 2
    assert batching(_cuda(max_batch=8), SDXL).vae_batch == 4  # never more VAE images than UNet samples
    assert batching(_cuda(max_batch=2), SDXL).vae_batch == 2


def test_cpu_keeps_the_old_defaults_and_no_window():
    plan = batching(ComputeConfig(), SD15)
    assert (plan.batch_size, plan.max_batch, plan.vae_batch, plan.group_window) == (8, 16, 16, 0)
    assert CPU_SHAPE.batch_size == 8
    assert batching(ComputeConfig(max_batch=6), None).vae_batch == 6  # the editor's default: max_batch


def test_flow_entries_and_unknown_resolutions_scale_by_area():
    flux = batching(_cuda(), Geometry("flux", 1024, 16))  # its own entry
    assert (flux.batch_size, flux.max_batch, flux.vae_batch) == (8, 8, 4)
    flux512 = batching(_cuda(), Geometry("flux", 512, 16))  # a smaller FLUX: its entry scaled by area x 4
    assert (flux512.batch_size, flux512.max_batch, flux512.vae_batch) == (32, 32, 16)
    sd3 = batching(_cuda(), Geometry("sd3", 1024, 16))
    assert (sd3.batch_size, sd3.max_batch, sd3.vae_batch) == (8, 16, 4)
    small = batching(_cuda(), Geometry("sd", 64, 8))  # the bundled 64 px model: capped
    assert (small.batch_size, small.max_batch) == (64, 128)


def test_geometry_read_from_the_model_configs():
    configs = {
        "unet/config.json": {"sample_size": 128, "block_out_channels": [320, 640, 1280]},
        "vae/config.json": {"block_out_channels": [128, 256, 512, 512]},
    }
    assert geometry_from_configs("sdxl", configs.__getitem__) == Geometry("sdxl", 1024, 32)
    assert geometry_from_configs("sd", {}.__getitem__) is None


def test_values_reach_the_editor_and_the_bundle(tmp_path):
    from diffedit.tiny import save_tiny_model
    from pipeline.identity import inspect_model
    from pipeline.stages import EditStage

    model = save_tiny_model(tmp_path / "tiny", seed=0)
    before = torch.get_num_threads()
    try:
        planned = EditStage(_job(tmp_path, str(model)))
        set_ = EditStage(
            _job(tmp_path, str(model), max_batch=6, vae_batch=3, vae_tiling=True, vae_slicing=True)
        )
    finally:
        torch.set_num_threads(before)
    assert (planned.editor.max_batch, planned.editor.vae_batch) == (16, 16)  # the CPU plan
    assert not planned.bundle.vae.use_tiling and not planned.bundle.vae.use_slicing
    assert (set_.editor.max_batch, set_.editor.vae_batch) == (6, 3)
    assert set_.bundle.vae.use_tiling and set_.bundle.vae.use_slicing
    # the preflight reads the same geometry as the loaded bundle, without loading it
    b = planned.bundle
    geometry = inspect_model(_job(tmp_path, str(model))).geometry
    assert geometry == Geometry(b.family, b.native_size, b.pixel_multiple)


def test_geometry_of_the_flow_families_read_from_the_transformer_config():
    configs = {
        "transformer/config.json": {"sample_size": 128, "patch_size": 2},
        "vae/config.json": {"block_out_channels": [128, 256, 512, 512]},
        "model_index.json": {},
    }
    assert geometry_from_configs("sd3", configs.__getitem__) == Geometry("sd3", 1024, 16)
    assert geometry_from_configs("flux", configs.__getitem__) == Geometry(
        "flux", 1024, 16
    )  # FluxPipeline's 128
    tiny = {**configs, "model_index.json": {"default_sample_size": 16}}
    assert geometry_from_configs("flux", tiny.__getitem__) == Geometry("flux", 128, 16)

"""The training script runs end to end on tiny settings, resumes from its checkpoint, and writes a
diffusers Stable Diffusion directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffedit.shapes import train

TINY = ["--vae-steps", "2", "--vae-batch", "2", "--n-data", "16", "--batch", "2", "--log-every", "1"]


def test_train_resume_and_export(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    out = tmp_path / "model"
    try:
        train.main(["--out", str(out), *TINY, "--unet-steps", "1"])
        with pytest.raises(SystemExit):  # refuses to overwrite a run without --resume
            train.main(["--out", str(out), *TINY, "--unet-steps", "1"])
        train.main(["--out", str(out), *TINY, "--unet-steps", "2", "--decoder-steps", "1", "--resume"])
    finally:
        torch.set_num_threads(threads)
    log = (out / "train_state" / "train.log").read_text()
    assert "unet: resumed at step 1" in log and "decoder step 1/1" in log
    summary = json.loads((out / "train_state" / "summary.json").read_text())
    assert summary["unet_steps"] == 2 and summary["vae_steps"] == 2 and summary["cpu_seconds"] > 0
    for name in ("unet", "vae", "text_encoder"):
        assert (out / name / "diffusion_pytorch_model.safetensors").exists() or (
            out / name / "model.safetensors"
        ).exists()
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(out), safety_checker=None)
    assert pipe.vae.config.scaling_factor == pytest.approx(summary["scaling_factor"])


def test_init_from_reuses_phases_1_2_and_checks_arguments(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    a, b = tmp_path / "a", tmp_path / "b"
    try:
        train.main(["--out", str(a), *TINY, "--unet-steps", "1", "--no-attention-at-top"])
        state_a = a / "train_state" / "state.pt"
        with pytest.raises(SystemExit, match="vae_steps=2 there, 3 here"):
            train.main(
                ["--out", str(b), *TINY[:1], "3", *TINY[2:], "--unet-steps", "1", "--init-from", str(state_a)]
            )
        train.main(["--out", str(b), *TINY, "--unet-steps", "1", "--init-from", str(state_a)])
    finally:
        torch.set_num_threads(threads)
    log_b = (b / "train_state" / "train.log").read_text()
    assert f"phases 1-2 taken from {state_a}" in log_b
    assert "vae step" not in log_b and "encoded 16 training scenes" not in log_b  # not redone
    sa = torch.load(state_a, weights_only=False)
    sb = torch.load(b / "train_state" / "state.pt", weights_only=False)
    assert sb["scaling_factor"] == sa["scaling_factor"] and sb["captions"] == sa["captions"]
    assert torch.equal(sb["latents"], sa["latents"])
    assert all(torch.equal(sb["vae"][k], v) for k, v in sa["vae"].items())
    assert sb["init_from"]["path"] == str(state_a)
    # The UNet layout follows --attention-at-top: v1's plain top level in a, attention at 16x16 in b.
    cfg_a = json.loads((a / "unet" / "config.json").read_text())
    cfg_b = json.loads((b / "unet" / "config.json").read_text())
    assert cfg_a["down_block_types"][0] == "DownBlock2D" and cfg_a["up_block_types"][-1] == "UpBlock2D"
    assert cfg_b["down_block_types"][0] == "CrossAttnDownBlock2D"
    assert cfg_b["up_block_types"][-1] == "CrossAttnUpBlock2D"


def test_init_model_fine_tunes_an_exported_model_on_edit_pairs(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    threads = torch.get_num_threads()
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    v3 = ["--n-pairs", "8", "--p-pair", "0.5", "--object-weight", "2", "--object-probs", "0,0,1"]
    try:
        train.main(["--out", str(base), *TINY, "--unet-steps", "1"])
        with pytest.raises(SystemExit, match="exclude each other"):
            train.main(["--out", str(tuned), *TINY, "--init-model", str(base), "--init-from", str(base)])
        with pytest.raises(SystemExit, match="layout differs"):
            train.main(["--out", str(tuned), *TINY, "--init-model", str(base), "--no-attention-at-top"])
        train.main(["--out", str(tuned), *TINY, *v3, "--unet-steps", "1", "--init-model", str(base)])
        train.main(
            ["--out", str(tuned), *TINY, *v3, "--unet-steps", "2", "--init-model", str(base), "--resume"]
        )
    finally:
        torch.set_num_threads(threads)
    log = (tuned / "train_state" / "train.log").read_text()
    assert "unet: starting from --init-model's weights" in log and "unet: resumed at step 1" in log
    assert "encoded 8 edit pairs" in log and "vae step" not in log
    state = torch.load(tuned / "train_state" / "state.pt", weights_only=False)
    assert state["pairs"]["source"].shape == (8, 4, 16, 16) and state["objects"].shape == (16, 1, 16, 16)
    assert all(c.count(" and ") == 2 for c in state["captions"])  # --object-probs 0,0,1: 3 objects each
    # The VAE (latent space, scaling factor) and the tokenizer are the base model's; the UNet moved on.
    from transformers import AutoTokenizer

    assert (tuned / "vae/diffusion_pytorch_model.safetensors").read_bytes() == (
        base / "vae/diffusion_pytorch_model.safetensors"
    ).read_bytes()
    tok0, tok1 = (AutoTokenizer.from_pretrained(d / "tokenizer") for d in (base, tuned))
    assert tok0.get_vocab() == tok1.get_vocab()
    assert json.loads((tuned / "vae/config.json").read_text())["scaling_factor"] == pytest.approx(
        json.loads((base / "vae/config.json").read_text())["scaling_factor"]
    )
    u0 = load_file(base / "unet/diffusion_pytorch_model.safetensors")
    u1 = load_file(tuned / "unet/diffusion_pytorch_model.safetensors")
    assert u0.keys() == u1.keys() and any(not torch.equal(u0[k], u1[k]) for k in u0)
    summary = json.loads((tuned / "train_state" / "summary.json").read_text())
    assert summary["unet_steps"] == 2 and summary["args"]["init_model"] == str(base)


def test_flow_objective_inputs_and_targets() -> None:
    """The rectified-flow objective (``--objective flow``): x_s = (1 - s) x0 + s eps with target
    v = eps - x0, so x0 = x_s - s v and eps = x_s + (1 - s) v exactly; an edit pair's target v* reads
    back as the *edited* latent, x_s - s v* = target, while the input shows the source inside R."""
    from diffedit.modelcall import from_velocity
    from diffedit.shapes import dataset

    g = torch.Generator().manual_seed(0)
    x0, noise = (
        torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64),
        torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64),
    )
    s = torch.tensor([0.05, 0.5, 0.97], dtype=torch.float64)
    xs, v = dataset.flow_input(x0, noise, s.view(-1, 1, 1, 1))
    pred = from_velocity(xs, v, s)
    torch.testing.assert_close(pred.x0, x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(pred.eps, noise, rtol=0, atol=1e-12)

    source, target = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64), x0
    region = torch.zeros(3, 1, 8, 8, dtype=torch.float64)
    region[:, :, 2:5, 3:6] = 1
    pxs, pv = dataset.edit_pair_flow_input(source, target, region, noise, s.view(-1, 1, 1, 1))
    torch.testing.assert_close(from_velocity(pxs, pv, s).x0, target, rtol=0, atol=1e-12)
    shown = (pxs - s.view(-1, 1, 1, 1) * noise) / (1 - s.view(-1, 1, 1, 1))  # the clean latent in the input
    torch.testing.assert_close(shown[..., 2:5, 3:6], source[..., 2:5, 3:6], rtol=0, atol=1e-9)
    torch.testing.assert_close(shown[..., :2, :], target[..., :2, :], rtol=0, atol=1e-9)
    # No edit region: the pair is the plain objective.
    same = dataset.edit_pair_flow_input(source, target, torch.zeros_like(region), noise, s.view(-1, 1, 1, 1))
    torch.testing.assert_close(same, (xs, v), rtol=0, atol=1e-12)

    # Training levels: shift 1 is uniform; shift k maps 0 -> 0, 1 -> 1, monotone, noisier than uniform.
    u = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.equal(dataset.flow_level(u, 1.0), u)
    s2 = dataset.flow_level(u, 2.0)
    assert s2[0] == 0 and s2[-1] == 1 and bool((s2.diff() > 0).all()) and bool((s2[1:-1] > u[1:-1]).all())


def test_flow_objective_trains_and_exports_a_flow_unet(tmp_path: Path) -> None:
    """``--objective flow`` fine-tunes an exported eps model into a velocity model: the export names a
    FlowMatchEulerDiscreteScheduler with the training shift, loads as a flow bundle (flow grid, velocity
    read by ``from_velocity``), and validate's layout name says so."""
    from diffedit.loading import load_bundle
    from diffedit.loading.layout import layout_name

    threads = torch.get_num_threads()
    base, flow = tmp_path / "base", tmp_path / "flow"
    pairs = ["--n-pairs", "8", "--p-pair", "0.5", "--object-weight", "2"]
    try:
        train.main(["--out", str(base), *TINY, "--unet-steps", "1"])
        train.main(
            ["--out", str(flow), *TINY, *pairs, "--unet-steps", "2", "--init-model", str(base),
             "--objective", "flow", "--flow-shift", "3"]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    scheduler = json.loads((flow / "scheduler/scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "FlowMatchEulerDiscreteScheduler" and scheduler["shift"] == 3.0
    index = json.loads((flow / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert layout_name(index) == "Stable Diffusion, rectified-flow UNet"
    assert layout_name(json.loads((base / "model_index.json").read_text())) == "Stable Diffusion"
    summary = json.loads((flow / "train_state" / "summary.json").read_text())
    assert summary["objective"] == "flow" and summary["unet_steps"] == 2
    # a flow model is fine-tuned only as a flow model, at its own shift (refused before any training)
    try:
        for extra, message in (
            ([], "trained on the flow objective"),
            (["--objective", "flow"], "at shift 3"),
        ):
            with pytest.raises(SystemExit, match=message):
                train.main(["--out", str(tmp_path / "again"), *TINY, "--init-model", str(flow), *extra])
    finally:
        torch.set_num_threads(threads)  # main() sets the run's threads first

    bundle = load_bundle(str(flow))
    assert bundle.prediction_type == "flow" and bundle.family == "sd"
    levels = bundle.levels(4)
    assert levels.kind == "flow" and float(levels.sigma[-1]) == 1.0 and float(levels.sigma[0]) == 0.0
    from diffusers import FlowMatchEulerDiscreteScheduler  # the grid is the exported scheduler's, shift 3

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(4)
    torch.testing.assert_close(levels.sigma, scheduler.sigmas.flip(0).to(levels.sigma.dtype))
    assert float(levels.sigma[2]) > 0.6  # shifted: the middle level of a uniform grid would be 0.5
    torch.testing.assert_close(levels.t, levels.sigma * 1000)
    with pytest.raises(ValueError, match="velocity"):
        bundle.eps(torch.zeros(1, 4, 16, 16), torch.tensor([500]), bundle.encode_prompts([""]))

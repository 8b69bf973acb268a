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

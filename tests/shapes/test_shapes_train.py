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

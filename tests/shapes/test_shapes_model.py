"""The committed shapes model (models/shapes-v3) loads as a diffusers Stable Diffusion pipeline."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

MODEL = Path(__file__).resolve().parents[2] / "models" / "shapes-v3"


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield StableDiffusionPipeline.from_pretrained(str(MODEL), safety_checker=None)
    torch.set_num_threads(before)


def test_layout_and_size() -> None:
    index = json.loads((MODEL / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    weights = sorted(MODEL.glob("*/*.safetensors"))
    assert {w.parent.name for w in weights} == {"unet", "vae", "text_encoder"}
    assert not list(MODEL.glob("**/*.bin")) and not list(MODEL.glob("**/*.pt"))
    assert sum(w.stat().st_size for w in weights) <= 25 * 1024 * 1024
    assert (MODEL / "README.md").exists() and (MODEL / "samples.png").exists()


def test_components(pipe) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from diffedit.shapes.vocab import VOCABULARY

    assert isinstance(pipe.unet, UNet2DConditionModel)
    assert isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    assert isinstance(pipe.tokenizer, CLIPTokenizer)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert pipe.scheduler.config.prediction_type == "epsilon"
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.unet.config.in_channels == pipe.vae.config.latent_channels == 4
    assert pipe.vae_scale_factor == 4 and pipe.unet.config.sample_size == 16
    assert 0.05 < pipe.vae.config.scaling_factor < 20
    for word in VOCABULARY:  # every caption word is one token
        assert len(pipe.tokenizer.tokenize(word)) == 1
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)


def test_draws_and_encodes(pipe) -> None:
    gen = torch.Generator().manual_seed(0)
    out = pipe(
        "a red circle on a grey striped background",
        height=64,
        width=64,
        num_inference_steps=2,
        guidance_scale=5.0,
        generator=gen,
        output_type="np",
    )
    assert out.images.shape == (1, 64, 64, 3)
    x = torch.zeros(1, 3, 64, 64)
    z = pipe.vae.encode(x).latent_dist.mode()
    assert z.shape == (1, 4, 16, 16)


def test_loads_with_diffedit_pipeline() -> None:
    from diffusers import StableDiffusionDiffEditPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = StableDiffusionDiffEditPipeline.from_pretrained(str(MODEL), safety_checker=None)
    assert p.unet.config.sample_size == 16

"""The real architectures (benchmarks.perf.fullsize, benchmarks.perf.archs): the typed-in configs
build the published models (parameter counts), FLOPs are counted on the meta device, and (slow) each
architecture edits end to end through DiffEditor and through the Ray job at 128 px."""

from __future__ import annotations

import pytest

from benchmarks.perf.archs import count_flops, flops_per_edit, format_archs, run_archs
from benchmarks.perf.fullsize import ARCHS, arch_config, build_modules, count_parameters
from diffedit.editor import DiffEditor
from diffedit.params import EditParams
from diffedit.tiny import tiny_bundle

#: Parameters of the published models (diffusers' and transformers' module counts of
#: runwayml/stable-diffusion-v1-5, stabilityai/stable-diffusion-2-1, stabilityai/stable-diffusion-xl-base-1.0).
PUBLISHED = {
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sd21": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sdxl": {
        "unet": 2_567_463_684,
        "vae": 83_653_863,
        "text_encoder": 123_060_480,
        "text_encoder_2": 694_659_840,
    },
}


@pytest.mark.parametrize("name", ARCHS)
def test_configs_build_the_published_models(name):
    modules = build_modules(name, device="meta")
    assert count_parameters(modules) == PUBLISHED[name]
    assert all(p.device.type == "meta" for m in modules.values() for p in m.parameters())


def test_architecture_specifics():
    sd21, sdxl = arch_config("sd21"), arch_config("sdxl")
    assert (
        sd21["scheduler"]["prediction_type"] == "v_prediction" and sd21["text_encoder"]["hidden_size"] == 1024
    )
    assert sdxl["unet"]["cross_attention_dim"] == 768 + 1280  # the two encoders' widths, concatenated
    assert sdxl["vae"]["force_upcast"] is True and sdxl["native_size"] == 1024
    small = build_modules("sd15", device="meta", size=128)
    assert small["unet"].config.sample_size == 16 and small["vae"].config.sample_size == 128
    with pytest.raises(ValueError, match="unknown architecture"):
        arch_config("sd3")


def test_flops_counted_on_meta_at_native_size():
    f = count_flops("sd15")
    assert f["native_size"] == 512
    # one UNet evaluation at 64x64 latents: 0.80 TFLOPs (the commonly quoted ~400 G multiply-adds)
    assert 0.78e12 < f["flops"]["unet"] < 0.83e12
    assert f["flops"]["vae_decode"] > f["flops"]["vae_encode"] > f["flops"]["text_encoder"] > 0
    per_edit = flops_per_edit(f["flops"], 140)
    expected = 140 * f["flops"]["unet"] + f["flops"]["vae_encode"] + f["flops"]["vae_decode"]
    assert per_edit == expected + 2 * f["flops"]["text_encoder"]


def test_flops_sdxl_two_encoders():
    f = count_flops("sdxl")
    assert set(f["flops"]) == {"text_encoder", "text_encoder_2", "unet", "vae_encode", "vae_decode"}
    assert 6.5e12 < f["flops"]["unet"] < 7.0e12  # at 128x128 latents
    assert flops_per_edit(f["flops"], 0, 0, 0, 1) == f["flops"]["text_encoder"] + f["flops"]["text_encoder_2"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ARCHS)
def test_full_size_architecture_edits_through_editor_and_ray(name, tmp_path):
    """Random-weight full-size model at 128 px, 2 DDIM steps, 1 mask draw, bfloat16 (a few minutes
    each on one thread; SDXL's build and load need about 7 GB)."""
    out = run_archs(
        [name], size=128, steps=2, draws=1, dtype="bfloat16", threads=1, workdir=tmp_path, keep=False
    )
    fig = out["archs"][name]
    assert fig["parameters"] == PUBLISHED[name]
    e = fig["edit"]
    assert e["native_size_here"] == 128 and e["dtype"] == "bfloat16" and e["image_size"] == [128, 128]
    assert e["image_finite_nonconstant"]
    # counted by the hook = the editor's own counter = what the same parameters cost on a tiny model
    params = EditParams(num_inference_steps=2, num_mask_draws=1)
    tiny = DiffEditor(tiny_bundle(seed=0), params).edit_images(
        [_image()], ["a blue circle"], ["a red circle"]
    )
    assert e["unet_evals_per_edit"] == e["unet_evals_editor_counter"] == tiny[0].counters["unet_evals"]
    assert e["seconds_per_unet_eval"] > 0 and e["peak_rss_bytes"] > 0.5 * 2 * sum(PUBLISHED[name].values())
    r = fig["ray"]
    assert r["exit_code"] == 0 and r["rows_ok"] == 1 and r["rows_failed"] == 0
    assert "real architectures" in format_archs(out)
    assert not (tmp_path / f"{name}-bfloat16-128").exists()  # keep=False removed the model


def _image():
    from PIL import Image

    return Image.new("RGB", (32, 32), (200, 30, 30))


def test_arch_dtype_choice():
    from benchmarks.perf.archs import pick_dtype

    assert pick_dtype("sdxl", "auto") == "bfloat16" and pick_dtype("sd15", "float32") == "float32"
    with pytest.raises(ValueError, match="float16"):
        pick_dtype("sd15", "float16")


@pytest.mark.slow
def test_sd35_medium_edits_end_to_end_on_cpu_at_128px():
    """SD3.5-medium at its published architecture (2.47 B transformer, CLIP-L and CLIP-G; random weights,
    bfloat16, without the optional T5, which would add 9.5 GB) edits one image through DiffEditor at a
    reduced native size of 128 px: 4 flow steps, 2 mask draws, r 0.5, no CFG = 4 + 2 + 2 evaluations."""
    import numpy as np
    import torch
    from PIL import Image

    from benchmarks.gpu import _fullsize_flow

    bundle = _fullsize_flow("sd35-medium", t5=False, sample_size=16)(torch.bfloat16, "cpu")
    assert bundle.family == "sd3" and bundle.native_size == 128 and bundle.text_encoder_3 is None
    assert (
        sum(p.numel() for p in bundle.transformer.parameters()) == 2_243_171_520
    )  # + the 226 M pos-embed buffer
    params = EditParams(num_inference_steps=4, num_mask_draws=2, encode_ratio=0.5, guidance_scale=1.0)
    image = Image.fromarray((np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8))
    from diffedit.editor import EditRequest

    result = DiffEditor(bundle, params, max_batch=4).edit(
        [EditRequest(image, "a red circle", "a blue circle")]
    )[0]
    c = result.counters
    assert (c["unet_evals_mask"], c["unet_evals_encode"], c["unet_evals_decode"]) == (4, 2, 2)
    assert result.image.size == (128, 96) and (result.model_width, result.model_height) == (128, 96)
    assert torch.isfinite(result.latent).all()

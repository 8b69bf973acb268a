"""DiffEdit on SDXL: tiny SDXL components built in-process (diffedit.tiny), loaded from a diffusers SDXL
directory, edited through the same ``eps`` contract; parity with diffusers' StableDiffusionXLPipeline where
the semantics agree (text embeddings, guided DDIM sampling = decode with an all-ones mask, VAE decode),
batch invariance, per-row size conditions, the UNet count per edit, the float16 VAE upcast, the layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffedit import conditioning
from diffedit.decode import ddim_decode
from diffedit.editor import DiffEditor, EditRequest
from diffedit.loading import ModelLayoutError, check_layout, load_bundle
from diffedit.params import EditParams
from diffedit.reference import UNetSampleCounter, sdxl_ddim_pipeline
from diffedit.tiny import save_tiny_sdxl_model, tiny_bundle, tiny_sdxl_bundle

FAST = EditParams(num_inference_steps=10, num_mask_draws=3)


@pytest.fixture(scope="module")
def xl():
    """One tiny random SDXL bundle (float32, CPU). Native size 32 px."""
    return tiny_sdxl_bundle(seed=0)


@pytest.fixture(scope="module")
def xl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sdxl_model(tmp_path_factory.mktemp("sdxl") / "model")


@pytest.fixture(scope="module")
def pipe(xl):
    return sdxl_ddim_pipeline(xl)


def image(seed: int, w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8), "RGB")


def cond(bundle, prompts, original, target=(32, 32)):
    """Per-row conditioning of ``prompts``, all rows of one original and target size (w, h)."""
    emb = bundle.encode_prompts(prompts)
    return bundle.condition_rows(emb, [original] * len(prompts), [target] * len(prompts))


# ------------------------------------------------------------------------------------------- loading


def test_sdxl_directory_loads_into_the_same_bundle(xl, xl_dir):
    loaded = load_bundle(str(xl_dir))
    assert loaded.family == "sdxl" and loaded.force_zeros_for_empty_prompt
    assert type(loaded.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert len(loaded.weights_hash) == 64
    assert loaded.native_size == 32 and loaded.pixel_multiple == 4
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([901, 301])
    c = cond(xl, ["a red cat", ""], (32, 32))
    assert torch.equal(loaded.eps(x, t, c), xl.eps(x, t, c))  # same weights, same conditioning


def test_force_zeros_for_empty_prompt_is_read_from_model_index(xl_dir, tmp_path):
    copy = Path(shutil.copytree(xl_dir, tmp_path / "model"))
    index = json.loads((copy / "model_index.json").read_text())
    index["force_zeros_for_empty_prompt"] = False
    (copy / "model_index.json").write_text(json.dumps(index))
    bundle = load_bundle(str(copy))
    assert not bundle.force_zeros_for_empty_prompt
    assert bundle.encode_prompts([""]).abs().max() > 0  # "" encoded by the text encoders
    del index["force_zeros_for_empty_prompt"]  # diffusers' SDXL pipeline defaults to True
    (copy / "model_index.json").write_text(json.dumps(index))
    assert load_bundle(str(copy)).force_zeros_for_empty_prompt


def _damage(model: Path, edit) -> None:
    index = json.loads((model / "model_index.json").read_text())
    edit(index)
    (model / "model_index.json").write_text(json.dumps(index))


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda m: shutil.rmtree(m / "text_encoder_2"), "text_encoder_2/ missing"),
        (lambda m: shutil.rmtree(m / "tokenizer_2"), "tokenizer_2/ missing"),
        (
            lambda m: _damage(m, lambda i: i.update(text_encoder=[None, None], tokenizer=[None, None])),
            "an SDXL refiner?",
        ),
        (
            lambda m: _damage(m, lambda i: i.update(text_encoder_2=["transformers", "CLIPTextModel"])),
            "text_encoder_2 is CLIPTextModel, expected CLIPTextModelWithProjection",
        ),
        (
            lambda m: (m / "unet" / "config.json").write_text(
                json.dumps(
                    {**json.loads((m / "unet" / "config.json").read_text()), "addition_embed_type": None}
                )
            ),
            "an SDXL directory needs addition_embed_type='text_time'",
        ),
    ],
)
def test_sdxl_layout_errors_name_what_is_wrong(xl_dir, tmp_path, damage, expected):
    copy = Path(shutil.copytree(xl_dir, tmp_path / "model"))
    damage(copy)
    with pytest.raises(ModelLayoutError, match=expected.replace("?", r"\?")):
        load_bundle(str(copy))


def test_text_time_unet_in_an_sd_directory_is_refused(xl_dir, tmp_path):
    """An SD model_index (one text encoder) with an SDXL UNet: the layout check says what is missing."""
    copy = Path(shutil.copytree(xl_dir, tmp_path / "model"))
    _damage(copy, lambda i: [i.pop(k) for k in ("text_encoder_2", "tokenizer_2", "_class_name")])
    files = {p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()}
    with pytest.raises(ModelLayoutError, match="added conditions need an SDXL directory"):
        check_layout(files, lambda rel: json.loads((copy / rel).read_text()), "m")


def test_components_that_do_not_fit_are_refused():
    from diffedit.tiny import tiny_sdxl_components

    parts = tiny_sdxl_components()
    with pytest.raises(ValueError, match="needs text_encoder_2 and tokenizer_2"):
        from diffedit.bundle import ModelBundle

        ModelBundle(**{**parts, "text_encoder_2": None})
    sd = tiny_bundle()
    with pytest.raises(ValueError, match="a second text encoder needs an SDXL UNet"):
        ModelBundle(
            unet=sd.unet, vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer,
            scheduler_config=sd.scheduler_config, text_encoder_2=parts["text_encoder_2"],
            tokenizer_2=parts["tokenizer_2"],
        )  # fmt: skip


# ------------------------------------------------------------------------------------------- conditioning


@pytest.mark.parametrize(("pooled_dim", "width"), [(32, 64), (1280, 2048), (100, 16)])
def test_conditioning_pack_round_trip(pooled_dim, width):
    hidden, pooled = torch.randn(3, 5, width), torch.randn(3, pooled_dim)
    ids = torch.tensor([[480.0, 640, 0, 0, 768, 1024]] * 3)
    packed = conditioning.with_time_ids(conditioning.pack(hidden, pooled), ids, pooled_dim)
    assert packed.shape == (3, 5 + conditioning.extra_slots(pooled_dim, width), width)
    h, p, t = conditioning.unpack(packed, pooled_dim)
    assert torch.equal(h, hidden) and torch.equal(p, pooled) and torch.equal(t, ids)


def test_time_ids_order_is_diffusers():
    assert conditioning.time_ids_for((640, 480), (1024, 768)) == [480, 640, 0, 0, 768, 1024]


# ------------------------------------------------------------------------------------------- parity


def test_text_embeddings_equal_diffusers_encode_prompt(xl, pipe):
    """Hidden states and pooled embedding of a prompt are diffusers' ``encode_prompt``'s; the empty
    prompt is its zeroed unconditional (force_zeros_for_empty_prompt, negative_prompt None)."""
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        ["a red cat", "a dog"], device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True
    )
    ours = xl.encode_prompts(["a red cat", "a dog", ""])
    hidden, our_pooled, time_ids = conditioning.unpack(ours, xl.text_encoder_2.config.projection_dim)
    assert torch.equal(hidden[:2], embeds) and torch.equal(our_pooled[:2], pooled)
    assert torch.equal(hidden[2], negative[0]) and torch.equal(our_pooled[2], negative_pooled[0])
    assert negative.abs().max() == 0 and time_ids.abs().max() == 0  # sizes come per row


@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_decode_with_all_ones_mask_is_diffusers_ddim_sampling(xl, pipe, guidance):
    """From the same starting latent, timesteps, guidance and size conditions, DiffEdit's decode with an
    all-ones mask is diffusers' SDXL DDIM sampling, latents and decoded pixels (its VAE decode path),
    with the same UNet evaluations per step (2 guided, 1 at guidance 1)."""
    steps, original = 10, (48, 40)  # (w, h): the input's size before resizing to the model's 32 x 32
    xT = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    kwargs = {
        "prompt": "a red cat",
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "latents": xT.clone(),
        "height": 32,
        "width": 32,
        "original_size": (original[1], original[0]),
        "target_size": (32, 32),
    }
    counter = UNetSampleCounter(xl.unet)
    try:
        theirs = pipe(**kwargs, output_type="latent").images
        their_evals = counter.samples
        their_pixels = pipe(**kwargs, output_type="pt").images  # (1, 3, 32, 32) in [0, 1]
    finally:
        counter.close()
    assert their_evals == (2 if guidance > 1 else 1) * steps

    levels = xl.levels(steps)  # all S steps: encode ratio 1
    evals = torch.zeros(1, dtype=torch.int64)
    ours = ddim_decode(
        xl.denoise,
        [torch.zeros_like(xT)] * steps + [xT],  # an all-ones mask takes nothing from these
        torch.ones(1, 1, 16, 16),
        levels,
        cond(xl, ["a red cat"], original),
        cond(xl, [""], original),
        torch.tensor([guidance]),
        max_batch=8,
        evals=evals,
    )
    assert int(evals) == (2 if guidance != 1 else 1) * steps
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    pixels = (xl.vae_decode(ours) + 1) / 2
    torch.testing.assert_close(pixels, their_pixels, rtol=1e-4, atol=1e-4)


def test_size_conditions_reach_the_unet_per_row(xl):
    """Each row's UNet calls carry its own time ids: original (h, w) of its input, crop (0, 0), target
    (h, w) the model works at — rows of one bucket (same model size) with different input sizes."""
    seen: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        seen.append(kwargs["added_cond_kwargs"]["time_ids"].clone())

    handle = xl.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        editor = DiffEditor(xl, params=FAST, max_batch=64)
        results = editor.edit(
            [EditRequest(image(1, 32, 32), "a red cat", "a cat"), EditRequest(image(2, 64, 64), "a dog", "")]
        )
    finally:
        handle.remove()
    assert [r.model_width for r in results] == [32, 32]
    ids = torch.cat(seen).unique(dim=0)
    assert ids.tolist() == [[32, 32, 0, 0, 32, 32], [64, 64, 0, 0, 32, 32]]


# ------------------------------------------------------------------------------------------- editing


def test_counts_140_unet_evaluations_per_sdxl_edit_at_defaults(xl):
    """mask 2x10, encode 40 (r = 0.8 of 50), decode 2x40: counted by a hook on the UNet too."""
    counter = UNetSampleCounter(xl.unet)
    try:
        result = DiffEditor(xl).edit([EditRequest(image(0, 32, 32), "a red cat", "a blue cat")])[0]
    finally:
        counter.close()
    c = result.counters
    assert (c["unet_evals_mask"], c["unet_evals_encode"], c["unet_evals_decode"]) == (20, 40, 80)
    assert c["unet_evals"] == 140 == counter.samples


def test_sdxl_edit_changes_inside_the_mask_only(xl):
    img = image(3, 40, 24)
    result = DiffEditor(xl, params=FAST).edit([EditRequest(img, "a red cat", "a blue cat", seed=5)])[0]
    assert result.image.size == (40, 24) and result.image.mode == "RGB"
    m = torch.from_numpy(result.mask_binary_latent)
    assert 0 < result.mask_area < 1
    outside = (result.latent - result.input_latent)[:, ~m]
    assert torch.equal(outside, torch.zeros_like(outside))  # the clean input latent outside, exactly
    assert (result.latent - result.input_latent)[:, m].abs().max() > 1e-3
    again = DiffEditor(xl, params=FAST).edit([EditRequest(img, "a red cat", "a blue cat", seed=5)])[0]
    assert torch.equal(again.latent, result.latent)  # per-row seeds: the same row, the same edit


def test_sdxl_batch_invariance_float64():
    """A row's outputs are the same alone or among rows of other prompts, input sizes (other time ids in
    the same bucket), parameters and chunkings; float64 leaves only rounding (as the SD test)."""
    xl64 = tiny_sdxl_bundle(seed=0, dtype=torch.float64)
    target = EditRequest(image(1, 32, 32), "a red circle", "a blue circle", seed=7, id="t")
    batch = [
        EditRequest(image(2, 64, 64), "a green dog", "a dog", seed=1),
        target,
        EditRequest(image(3, 40, 24), "a black car", "", seed=2),
        EditRequest(image(4, 48, 48), "a star", "a star", seed=3, params=FAST.replace(guidance_scale=3.0)),
    ]
    alone = DiffEditor(xl64, params=FAST, max_batch=64).edit([target])[0]
    for max_batch in (3, 64):
        batched = DiffEditor(xl64, params=FAST, max_batch=max_batch).edit(batch)[1]
        assert batched.id == "t" and batched.latent.dtype == torch.float64
        assert torch.allclose(alone.latent, batched.latent, rtol=0, atol=1e-8)
        np.testing.assert_allclose(alone.mask_soft_latent, batched.mask_soft_latent, rtol=0, atol=1e-6)
        assert np.array_equal(alone.mask_binary_latent, batched.mask_binary_latent)
        assert np.array_equal(np.asarray(alone.image), np.asarray(batched.image))


def test_sdxl_batch_invariance_float32_masks(xl):
    target = EditRequest(image(1, 32, 32), "a red circle", "a blue circle", seed=7)
    alone = DiffEditor(xl, params=FAST, max_batch=64).edit([target])[0]
    batch = [EditRequest(image(2, 64, 64), "a green dog", "a dog", seed=1), target]
    batched = DiffEditor(xl, params=FAST, max_batch=3).edit(batch)[1]
    np.testing.assert_allclose(alone.mask_soft_latent, batched.mask_soft_latent, rtol=0, atol=1e-4)
    assert np.array_equal(alone.mask_binary_latent, batched.mask_binary_latent)
    torch.testing.assert_close(alone.input_latent, batched.input_latent, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------- precision


def test_float16_sdxl_bundle_keeps_its_vae_in_float32_sd_does_not():
    """force_upcast: the SDXL VAE stays float32 under a float16 bundle (its float16 activations
    overflow); an SD bundle ignores the flag, as diffusers' SD pipelines do."""
    xl16 = tiny_sdxl_bundle(seed=0, dtype=torch.float16)
    assert xl16.dtype == torch.float16 and xl16.vae_dtype == torch.float32
    assert tiny_bundle(seed=0, dtype=torch.float16).vae_dtype == torch.float16

    # Large activations inside the decoder, as in the real SDXL VAE: its first conv's weights x 1e5.
    with torch.no_grad():
        xl16.vae.decoder.conv_in.weight.mul_(1e5)
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(xl16.vae_decode(latents)).all()
    assert xl16.vae_encode(torch.zeros(1, 3, 32, 32)).dtype == torch.float32
    xl16.vae.to(torch.float16)  # what a float16 VAE does with the same latents: overflow
    assert xl16.vae_dtype == torch.float16
    assert not torch.isfinite(xl16.vae_decode(latents)).all()

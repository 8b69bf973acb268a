"""DiffEdit on rectified-flow models (SD3, FLUX.1), proved on tiny random models against diffusers.

Parity: text conditioning equals the pipelines' ``encode_prompt``; decoding with an all-ones mask from
the encoded latent of the full grid (r = 1) equals ``StableDiffusion3Pipeline`` / ``FluxPipeline``
sampling from the same latents and sigmas, to float32 tolerance (rtol 1e-4, atol 1e-5: the two
compute an Euler step as x + (s' - s) v and as (1 - s') x0-hat + s' eps-hat); evaluations are counted
by a hook on the transformer; a row's edit does not depend on its batch-mates.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffedit import conditioning
from diffedit.decode import ddim_decode
from diffedit.editor import DiffEditor, EditRequest
from diffedit.encode import ddim_encode
from diffedit.flow_bundle import pack_latents, unpack_latents
from diffedit.params import EditParams
from diffedit.tiny_flow import tiny_flux_bundle, tiny_sd3_bundle

PROMPTS = ["a red circle", "", "a blue star on a green background"]


@pytest.fixture(scope="module")
def sd3():
    return tiny_sd3_bundle(seed=0)


@pytest.fixture(scope="module")
def flux():
    return tiny_flux_bundle(seed=0)


def _pipeline(bundle):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(bundle.scheduler_config)
    common = dict(
        transformer=bundle.transformer,
        vae=bundle.vae,
        text_encoder=bundle.text_encoder,
        tokenizer=bundle.tokenizer,
        text_encoder_2=bundle.text_encoder_2,
        tokenizer_2=bundle.tokenizer_2,
        scheduler=scheduler,
    )
    if bundle.family == "sd3":
        pipe = StableDiffusion3Pipeline(
            **common, text_encoder_3=bundle.text_encoder_3, tokenizer_3=bundle.tokenizer_3
        )
    else:
        pipe = FluxPipeline(**common)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _count_hook(module):
    """Samples the transformer evaluates: (list of batch sizes, hook handle)."""
    seen = []
    handle = module.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["hidden_states"].shape[0]), with_kwargs=True
    )
    return seen, handle


def test_sd3_text_conditioning_equals_the_pipelines_encode_prompt(sd3):
    pipe = _pipeline(sd3)
    embeds, _, pooled, _ = pipe.encode_prompt(
        PROMPTS, None, None, do_classifier_free_guidance=False, max_sequence_length=256, device="cpu"
    )
    hidden, ours_pooled, extra = conditioning.unpack(sd3.encode_prompts(PROMPTS), sd3.pooled_dim, 0)
    assert extra.shape == (3, 0) and hidden.shape == (3, 16 + 256, 32)  # 16 CLIP tokens (tiny) + 256 T5
    torch.testing.assert_close(hidden, embeds, rtol=0, atol=0)
    torch.testing.assert_close(ours_pooled, pooled, rtol=0, atol=0)


def test_sd3_without_t5_conditions_on_zeros_as_diffusers(sd3):
    from diffedit.flow_bundle import FlowBundle

    no_t5 = FlowBundle(
        transformer=sd3.transformer,
        vae=sd3.vae,
        text_encoder=sd3.text_encoder,
        tokenizer=sd3.tokenizer,
        text_encoder_2=sd3.text_encoder_2,
        tokenizer_2=sd3.tokenizer_2,
        scheduler_config=sd3.scheduler_config,
    )
    hidden, _, _ = conditioning.unpack(no_t5.encode_prompts(PROMPTS[:1]), no_t5.pooled_dim, 0)
    assert torch.equal(hidden[:, 16:], torch.zeros(1, 256, 32))


def test_flux_text_conditioning_equals_the_pipelines_encode_prompt(flux):
    pipe = _pipeline(flux)
    embeds, pooled, text_ids = pipe.encode_prompt(PROMPTS, None, device="cpu", max_sequence_length=512)
    hidden, ours_pooled, extra = conditioning.unpack(flux.encode_prompts(PROMPTS), flux.pooled_dim, 1)
    assert hidden.shape == (3, 512, 32) and torch.equal(text_ids, torch.zeros(512, 3))
    torch.testing.assert_close(hidden, embeds, rtol=0, atol=0)
    torch.testing.assert_close(ours_pooled, pooled, rtol=0, atol=0)
    assert torch.equal(extra, torch.full((3, 1), 3.5))  # FLUX-dev's distilled guidance travels per sample


def test_flux_warns_for_each_encoder_that_truncates(flux, caplog):
    long = " ".join(["red"] * 600)
    with caplog.at_level("WARNING", logger="diffedit.flow_bundle"):
        flux.encode_prompts([long, "a cat"])
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("CLIP truncates") and "77" not in m for m in messages)  # tiny CLIP: 16 tokens
    assert any(m.startswith("T5 truncates this prompt at 512 tokens") for m in messages)
    assert not any("a cat" in m for m in messages)


def test_flux_packing_round_trips_as_diffusers():
    from diffusers import FluxPipeline

    x = torch.randn(2, 4, 6, 8)
    tokens = pack_latents(x)
    assert torch.equal(tokens, FluxPipeline._pack_latents(x, 2, 4, 6, 8))
    assert torch.equal(unpack_latents(tokens, 6, 8), x)
    assert torch.equal(FluxPipeline._unpack_latents(tokens, 6 * 8, 8 * 8, 8), x)


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_sd3_decoding_with_an_all_ones_mask_equals_the_pipeline(sd3, guidance):
    """r = 1, M = 1: DiffEdit's decode is StableDiffusion3Pipeline's sampling from the same x_T and sigmas,
    with real CFG (2 evaluations a step) or none (1)."""
    steps = 6
    pipe = _pipeline(sd3)
    xT = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    seen, handle = _count_hook(sd3.transformer)
    try:
        theirs = pipe(
            "a red circle",
            num_inference_steps=steps,
            guidance_scale=guidance,
            latents=xT.clone(),
            height=32,
            width=32,
            output_type="latent",
        ).images
    finally:
        handle.remove()
    assert sum(seen) == (2 if guidance > 1 else 1) * steps
    levels = sd3.levels(steps)
    cond = sd3.encode_prompts(["a red circle", ""])
    evals = torch.zeros(1, dtype=torch.int64)
    ours = ddim_decode(
        sd3.denoise,
        [torch.zeros_like(xT)] * steps + [xT],
        torch.ones(1, 1, 16, 16),
        levels,
        cond[:1],
        cond[1:],
        torch.tensor([guidance]),
        max_batch=8,
        evals=evals,
    )
    assert int(evals) == (2 if guidance != 1 else 1) * steps
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_flux_decoding_with_an_all_ones_mask_equals_the_pipeline(flux):
    """FLUX-dev with its distilled guidance (3.5, no CFG): one evaluation a step; the size's mu and
    FluxPipeline's sigmas give the same grid; packed tokens and image ids as the pipeline's."""
    steps = 5
    pipe = _pipeline(flux)
    xT = torch.randn(1, 4, 16, 12, generator=torch.Generator().manual_seed(1))
    seen, handle = _count_hook(flux.transformer)
    try:
        theirs = pipe(
            "a red circle",
            num_inference_steps=steps,
            guidance_scale=3.5,
            latents=pack_latents(xT),
            height=32,
            width=24,
            output_type="latent",
        ).images
    finally:
        handle.remove()
    assert sum(seen) == steps
    levels = flux.levels(steps, (16, 12))
    torch.testing.assert_close(levels.sigma.flip(0), pipe.scheduler.sigmas, rtol=0, atol=0)
    cond = flux.encode_prompts(["a red circle", ""])
    ours = ddim_decode(
        flux.denoise,
        [torch.zeros_like(xT)] * steps + [xT],
        torch.ones(1, 1, 16, 12),
        levels,
        cond[:1],
        cond[1:],
        torch.tensor([1.0]),
        max_batch=8,
    )
    torch.testing.assert_close(ours, unpack_latents(theirs, 16, 12), rtol=1e-4, atol=1e-5)


def test_flux_grid_depends_on_the_size_and_inversion_uses_the_decoding_grid(flux):
    small, large = flux.levels(10, (16, 16)), flux.levels(10, (64, 64))
    assert not torch.equal(small.sigma, large.sigma)  # mu grows with the token count
    assert torch.equal(flux.levels(10, (16, 16)).sigma, small.sigma)


@pytest.mark.parametrize("make", [tiny_sd3_bundle, tiny_flux_bundle], ids=["sd3", "flux"])
def test_flow_inversion_is_exact_for_a_constant_velocity(make):
    """Inverse Euler (encode) then Euler (decode) is the identity when the velocity does not depend on
    the latent: the trajectory is the straight line x_s = (1 - s) x0 + s e, and the decode lands on x0."""
    bundle = make(seed=0, dtype=torch.float64)
    x0 = torch.randn(2, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    e = torch.randn(2, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def straight(x, t, cond, alpha, sigma):
        from diffedit.modelcall import from_velocity

        return from_velocity(x, e - x0, sigma)

    levels = bundle.levels(10, (8, 8)).upto(8)
    cond = torch.zeros(2, 3, 4, dtype=torch.float64)
    trajectory = ddim_encode(straight, x0, levels, cond, max_batch=4)
    s = levels.sigma[-1].double()
    torch.testing.assert_close(trajectory[-1], (1 - s) * x0 + s * e)
    y0 = ddim_decode(
        straight, trajectory, torch.ones(2, 1, 8, 8), levels, cond, cond, torch.ones(2), max_batch=4
    )
    torch.testing.assert_close(y0, x0)


def _image(seed: int, w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))


@pytest.mark.parametrize("make", [tiny_sd3_bundle, tiny_flux_bundle], ids=["sd3", "flux"])
def test_flow_edits_are_batch_invariant_and_counted(make):
    """A row's edit alone equals its edit among rows of other prompts, sizes and chunkings (float64), and
    each row's evaluations are what a hook on the transformer sees."""
    bundle = make(seed=0, dtype=torch.float64)
    params = EditParams(num_inference_steps=8, num_mask_draws=2, guidance_scale=2.0)
    target = EditRequest(_image(1, 32, 32), "a red circle", "a blue circle", seed=7)
    others = [
        EditRequest(_image(2, 32, 24), "a green star", "a star", seed=1),
        EditRequest(
            _image(3, 32, 32), "a black square", "", seed=2, params=params.replace(guidance_scale=1.0)
        ),
    ]
    alone = DiffEditor(bundle, params=params, max_batch=64).edit([target])[0]
    seen, handle = _count_hook(bundle.transformer)
    try:
        batch = DiffEditor(bundle, params=params, max_batch=3).edit([others[0], target, others[1]])
    finally:
        handle.remove()
    assert sum(seen) == sum(r.counters["unet_evals"] for r in batch)
    assert np.array_equal(np.asarray(alone.image), np.asarray(batch[1].image))
    torch.testing.assert_close(alone.latent, batch[1].latent, rtol=0, atol=1e-9)
    assert np.array_equal(alone.mask_binary_latent, batch[1].mask_binary_latent)


def test_flux_dev_costs_20_22_22_evaluations_at_28_steps_r_08_n_10(flux):
    """The issue's count: mask 2n = 20, encode floor(0.8 x 28) = 22, decode 22 (distilled guidance, no CFG)."""
    params = EditParams(num_inference_steps=28, encode_ratio=0.8, num_mask_draws=10, guidance_scale=1.0)
    r = DiffEditor(flux, params=params).edit([EditRequest(_image(0, 32, 32), "a red cat", "a blue cat")])[0]
    c = r.counters
    assert (c["unet_evals_mask"], c["unet_evals_encode"], c["unet_evals_decode"]) == (20, 22, 22)


@pytest.mark.parametrize(
    ("preset", "counts"),
    [("sd35-medium", (20, 32, 64)), ("flux-schnell", (20, 3, 3))],
    ids=["sd35-medium-116", "flux-schnell-26"],
)
def test_the_flow_presets_cost_what_readme_says(sd3, preset, counts):
    """README's costs at the presets' own params: SD3.5-medium 20 + 32 + 64 = 116 (40 steps, r 0.8, real
    CFG), FLUX.1-schnell 20 + 3 + 3 = 26 (4 steps, r 0.75, no CFG)."""
    from benchmarks.quality.preset import preset_params

    bundle = sd3 if preset == "sd35-medium" else tiny_flux_bundle(seed=0, schnell=True)
    params = preset_params(f"configs/models/{preset}.yaml")
    r = DiffEditor(bundle, params=params).edit([EditRequest(_image(0, 32, 32), "a red cat", "a blue cat")])[0]
    c = r.counters
    assert (c["unet_evals_mask"], c["unet_evals_encode"], c["unet_evals_decode"]) == counts
    assert c["unet_evals"] == sum(counts)

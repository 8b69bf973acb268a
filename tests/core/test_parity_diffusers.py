"""Parity with diffusers' deprecated StableDiffusionDiffEditPipeline on the same tiny components.

Where the semantics agree (the difference map, given the same noisy latents) the numbers agree;
each intentional difference is pinned by a test that shows diffusers' behaviour next to ours.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from diffedit.editor import DiffEditor, EditRequest
from diffedit.mask import difference_map
from diffedit.params import EditParams
from diffedit.reference import UNetSampleCounter, deprecated_diffedit_pipeline
from diffedit.schedule import mask_level


@pytest.fixture(scope="module")
def pipe(bundle):
    return deprecated_diffedit_pipeline(bundle)


def test_difference_map_matches_diffusers(bundle, pipe, random_image):
    """Same noisy latents: diffusers' mask map equals |1 - g| times ours, and its binary mask is its
    batch-mean clamp of our map.

    diffusers runs CFG in the mask step (4n evaluations) but unpacks ``encode_prompt``'s
    (prompt, negative) as (negative, prompt), so its guided source/target predictions are
    eps_P + g (eps_neg - eps_P); with equal negative prompts their difference is (1 - g)(eps_Q - eps_R):
    the paper's unguided map (ours, 2n evaluations), scaled by |1 - g|, which its normalisation removes.
    """
    n, seed, g = 4, 123, 7.5
    img = random_image(0, 32, 32)
    rec = UNetSampleCounter(pipe.unet)
    try:
        theirs = pipe.generate_mask(
            image=img,
            source_prompt="a blue cat",
            target_prompt="a red cat",
            num_maps_per_mask=n,
            mask_encode_strength=0.5,
            guidance_scale=g,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
        )
    finally:
        rec.close()
    assert rec.samples == 4 * n
    neg_src, source, uncond, target = rec.last.chunk(4)  # diffusers' own names for the chunks
    their_map = ((uncond + g * (target - uncond)) - (neg_src + g * (source - neg_src))).abs().mean(dim=(0, 1))

    # Replay their draws: posterior samples of the n repeated images, then the noise.
    gen = torch.Generator().manual_seed(seed)
    images = pipe.image_processor.preprocess(img).repeat_interleave(n, dim=0)
    x0 = pipe.prepare_image_latents(images, n, torch.float32, "cpu", gen)  # (n, 4, 16, 16)
    noise = randn_tensor(x0.shape, generator=gen, dtype=torch.float32)
    levels = bundle.levels(50)
    ks = torch.full((n,), mask_level(levels, 0.5))
    ts, alpha, sigma = levels.at(ks)
    emb = bundle.encode_prompts(["a red cat", "a blue cat"])
    # One row per map (each map has its own posterior sample), one draw each.
    ours = difference_map(
        bundle.denoise,
        x0,
        [noise[i : i + 1] for i in range(n)],
        ts,
        alpha,
        sigma,
        emb[[0] * n],
        emb[[1] * n],
        max_batch=8,
    )
    our_map = ours.mean(dim=0)  # (h, w)
    torch.testing.assert_close(their_map, abs(1 - g) * our_map, rtol=1e-3, atol=1e-5)
    # Their thresholding (clamp at 3 x the batch mean), applied to our map, gives their mask.
    clamp = our_map.mean() * 3.0
    assert np.array_equal(theirs[0], (our_map.clamp(0, clamp) / clamp > 0.5).int().numpy())


def test_diffusers_mask_step_fails_without_guidance(pipe, random_image):
    """The same unpacking swap leaves the prompt embeddings None when guidance is off."""
    with pytest.raises(TypeError):
        pipe.generate_mask(
            image=random_image(0, 32, 32),
            source_prompt="a cat",
            target_prompt="a red cat",
            num_maps_per_mask=2,
            guidance_scale=1.0,
        )


def test_diffusers_mask_couples_batch_mates_ours_does_not(bundle, pipe, random_image):
    """Intentional difference 1: one generator for every map and a batch-wide clamp make an image's
    mask depend on what else is in its batch in diffusers; ours is per row."""
    a, b = random_image(1, 32, 32), random_image(2, 32, 32)

    def theirs(images, sources, targets):
        return pipe.generate_mask(
            image=images,
            source_prompt=sources,
            target_prompt=targets,
            num_maps_per_mask=4,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        )

    alone = theirs([a], ["a blue cat"], ["a red cat"])[0]
    batched = theirs([b, a], ["a dog", "a blue cat"], ["a green bus", "a red cat"])[1]
    assert not np.array_equal(alone, batched)

    editor = DiffEditor(bundle, params=EditParams(num_mask_draws=4, num_inference_steps=10))
    r_alone = editor.edit([EditRequest(a, "a red cat", "a blue cat", seed=0)])[0]
    r_batch = editor.edit(
        [EditRequest(b, "a green bus", "a dog", seed=0), EditRequest(a, "a red cat", "a blue cat", seed=0)]
    )[1]
    assert np.array_equal(r_alone.mask_binary_latent, r_batch.mask_binary_latent)


def test_diffusers_background_is_one_step_noisy_ours_is_clean(bundle, pipe, random_image):
    """Intentional difference 2: with an all-zero mask diffusers returns its inverted latent of the
    first inversion step (never the clean latent); ours returns the clean input latent exactly."""
    img = random_image(3, 32, 32)
    inverted = pipe.invert(
        prompt="a cat",
        image=img,
        num_inference_steps=10,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    ).latents
    out = pipe(
        prompt="a red cat",
        mask_image=torch.zeros(1, 16, 16),
        image_latents=inverted,
        num_inference_steps=10,
        output_type="latent",
    ).images
    assert torch.equal(out[0], inverted[0, -1])  # the latent at diffusers' lowest inverted timestep
    clean = bundle.vae_encode(pipe.image_processor.preprocess(img))
    assert (out - clean).abs().max() > 1e-3

    ours = DiffEditor(bundle, params=EditParams(num_inference_steps=10)).edit(
        [EditRequest(img, "a red cat", "a cat", mask=np.zeros((32, 32), bool))]
    )[0]
    assert torch.equal(ours.latent, ours.input_latent)


def test_unet_evaluations_per_edit_200_in_diffusers_140_in_ours(bundle, pipe, random_image):
    """Intentional difference 3: CFG in the mask step and in encoding costs diffusers 200 UNet
    sample-evaluations per edit at its defaults (counted); the paper's recipe, ours, 140."""
    img = random_image(4, 32, 32)
    rec = UNetSampleCounter(pipe.unet)
    try:
        mask = pipe.generate_mask(
            image=img,
            source_prompt="a cat",
            target_prompt="a red cat",
            generator=torch.Generator().manual_seed(0),
        )
        after_mask = rec.samples
        inverted = pipe.invert(prompt="a cat", image=img, generator=torch.Generator().manual_seed(0)).latents
        after_invert = rec.samples
        pipe(prompt="a red cat", mask_image=mask, image_latents=inverted, output_type="latent")
    finally:
        rec.close()
    assert (after_mask, after_invert - after_mask, rec.samples - after_invert) == (40, 80, 80)
    assert rec.samples == 200
    ours = DiffEditor(bundle).edit([EditRequest(img, "a red cat", "a cat")])[0]
    assert ours.counters["unet_evals"] == 140


def test_diffusers_accepts_mismatched_prompt_lists_ours_refuses(bundle, pipe, random_image):
    """Intentional difference 4: diffusers does not check that source and target lists agree."""
    img = random_image(5, 32, 32)
    error = None
    try:
        pipe.generate_mask(
            image=img,
            source_prompt=["a cat", "a dog"],
            target_prompt="a red cat",
            num_maps_per_mask=2,
            generator=torch.Generator().manual_seed(0),
        )
    except Exception as exc:  # whatever surfaces, it is not a check of the two lists' lengths
        error = exc
    assert not (isinstance(error, ValueError) and "source" in str(error) and "target" in str(error)), error
    with pytest.raises(ValueError, match="list lengths differ"):
        DiffEditor(bundle).edit_images([img, img], ["a red cat"], captions=["a cat", "a dog"])


def test_diffusers_ignores_the_latents_argument(pipe, random_image):
    """Intentional difference 5: diffusers' __call__ takes ``latents`` and never reads it."""
    img = random_image(6, 32, 32)
    inverted = pipe.invert(prompt="a cat", image=img, num_inference_steps=5, output_type="latent").latents
    kwargs = {
        "prompt": "a red cat",
        "mask_image": torch.ones(1, 16, 16),
        "image_latents": inverted,
        "num_inference_steps": 5,
        "output_type": "latent",
    }
    plain = pipe(**kwargs).images
    given = pipe(**kwargs, latents=torch.randn(1, 4, 16, 16)).images
    assert torch.equal(plain, given)

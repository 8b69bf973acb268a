"""DiffEditor end to end on a tiny random model: invariances, exactness and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffedit.editor import DiffEditor, EditRequest, stage_generator
from diffedit.images import model_resolution, pil_to_tensor, tensor_to_pil, to_rgb
from diffedit.params import EditParams

FAST = EditParams(num_inference_steps=10, num_mask_draws=3)  # 8 encode steps: keeps the tests quick


@pytest.fixture(scope="module")
def editor(bundle):
    return DiffEditor(bundle, params=FAST, max_batch=64)


def test_counts_140_unet_evaluations_per_edit_at_defaults(bundle, random_image):
    """The paper's recipe at defaults: mask 2x10, encode 40 (r = 0.8 of 50), decode 2x40 = 140."""
    result = DiffEditor(bundle).edit([EditRequest(random_image(0, 32, 32), "a red cat", "a blue cat")])[0]
    c = result.counters
    assert (c["unet_evals_mask"], c["unet_evals_encode"], c["unet_evals_decode"]) == (20, 40, 80)
    assert c["unet_evals"] == 140 and c["vae_encodes"] == 1 and c["vae_decodes"] == 1
    assert all(c[f"seconds_{s}"] > 0 for s in ("mask", "encode", "decode", "vae"))


def _invariance_rows(random_image):
    target = EditRequest(random_image(1, 32, 32), "a red circle", "a blue circle", seed=7, id="t")
    others = [
        EditRequest(random_image(2, 32, 32), "a green dog", "a dog", seed=1),
        EditRequest(random_image(3, 40, 24), "a black car", "", seed=2),
        EditRequest(
            random_image(4, 32, 32),
            "a yellow star",
            "a star",
            seed=3,
            params=FAST.replace(guidance_scale=3.0, num_mask_draws=5),
        ),
    ]
    return target, [others[0], target, *others[1:]]


def test_batch_invariance_float64():
    """A row's every output is the same alone or among rows of other prompts, sizes, parameters and
    chunkings. In float64 the only differences left are rounding (~1e-15, amplified by a random UNet's
    chaotic sampling to far below 1e-8), so any coupling between rows would show."""
    from diffedit.tiny import tiny_bundle

    def image(seed, w, h, mode="RGB"):
        rng = np.random.default_rng(seed)
        return Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).convert(mode)

    bundle64 = tiny_bundle(seed=0, dtype=torch.float64)
    target, batch = _invariance_rows(image)
    alone = DiffEditor(bundle64, params=FAST, max_batch=64).edit([target])[0]
    for max_batch in (3, 64):
        batched = DiffEditor(bundle64, params=FAST, max_batch=max_batch).edit(batch)[1]
        assert batched.id == "t" and batched.latent.dtype == torch.float64
        assert torch.allclose(alone.latent, batched.latent, rtol=0, atol=1e-8)
        np.testing.assert_allclose(alone.mask_soft_latent, batched.mask_soft_latent, rtol=0, atol=1e-6)
        assert np.array_equal(alone.mask_binary_latent, batched.mask_binary_latent)
        assert np.array_equal(np.asarray(alone.image), np.asarray(batched.image))
        assert alone.counters["unet_evals"] == batched.counters["unet_evals"]


def test_batch_invariance_float32_masks(bundle, editor, random_image):
    """In float32 batched kernels round differently (~1e-7); the mask, computed from one noisy
    evaluation per draw, stays equal to float tolerance (the random UNet's 8-step sampling amplifies
    rounding in the edited latent itself, which the float64 test covers)."""
    target, batch = _invariance_rows(random_image)
    alone = editor.edit([target])[0]
    batched = DiffEditor(bundle, params=FAST, max_batch=3).edit(batch)[1]
    np.testing.assert_allclose(alone.mask_soft_latent, batched.mask_soft_latent, rtol=0, atol=1e-4)
    assert np.array_equal(alone.mask_binary_latent, batched.mask_binary_latent)
    torch.testing.assert_close(alone.input_latent, batched.input_latent, rtol=0, atol=1e-6)


def test_same_seed_same_result_different_seed_different_noise(editor, random_image):
    img = random_image(5, 32, 32)
    a, b = editor.edit(
        [EditRequest(img, "a red cat", "a cat", seed=11), EditRequest(img, "a red cat", "a cat", seed=11)]
    )
    c = editor.edit([EditRequest(img, "a red cat", "a cat", seed=12)])[0]
    assert torch.equal(a.latent, b.latent) and np.array_equal(a.mask_soft_latent, b.mask_soft_latent)
    assert not np.array_equal(a.mask_soft_latent, c.mask_soft_latent)
    # The draws themselves: a pure function of (seed, stage).
    n1 = torch.randn(3, generator=stage_generator(11, "mask"))
    assert torch.equal(n1, torch.randn(3, generator=stage_generator(11, "mask")))
    assert not torch.equal(n1, torch.randn(3, generator=stage_generator(12, "mask")))
    assert not torch.equal(n1, torch.randn(3, generator=stage_generator(11, "encode")))


def test_query_equal_to_reference_gives_empty_mask_and_vae_reconstruction(bundle, editor, random_image):
    img = random_image(6, 32, 32)
    result = editor.edit([EditRequest(img, "a red cat", "a red cat", seed=1)])[0]
    assert result.mask_area == 0.0 and not result.mask_binary_latent.any()
    assert np.all(np.asarray(result.mask_binary) == 0)
    # An empty mask keeps the clean latent everywhere: the output is the VAE reconstruction.
    assert torch.equal(result.latent, result.input_latent)
    recon = tensor_to_pil(bundle.vae_decode(result.input_latent[None])[0])
    assert np.array_equal(np.asarray(result.image), np.asarray(recon))


def test_all_zeros_given_mask_returns_vae_reconstruction_and_skips_mask_step(bundle, editor, random_image):
    img = random_image(7, 32, 32)
    result = editor.edit([EditRequest(img, "a red cat", "a cat", mask=np.zeros((32, 32), bool))])[0]
    assert result.counters["unet_evals_mask"] == 0
    x0 = bundle.vae_encode(pil_to_tensor(img)[None])
    assert torch.equal(result.latent, x0[0])
    assert np.array_equal(np.asarray(result.image), np.asarray(tensor_to_pil(bundle.vae_decode(x0)[0])))


def test_given_mask_is_the_edit_region(editor, random_image):
    mask = np.zeros((32, 32), bool)
    mask[8:16, 4:12] = True
    result = editor.edit([EditRequest(random_image(8, 32, 32), "a red cat", mask=mask)])[0]
    expected = np.zeros((16, 16), bool)
    expected[4:8, 2:6] = True
    assert np.array_equal(result.mask_binary_latent, expected)
    # Outside the mask the output latent is the input's.
    assert torch.equal(
        result.latent[:, ~torch.from_numpy(expected)], result.input_latent[:, ~torch.from_numpy(expected)]
    )
    assert not torch.equal(result.latent, result.input_latent)


def test_any_size_and_mode_is_returned_at_original_size(editor, random_image):
    requests = [
        EditRequest(random_image(9, 50, 20, mode), "a red cat", "a cat", seed=i)
        for i, mode in enumerate(["RGB", "L", "RGBA", "P", "CMYK", "1"])
    ]
    requests.append(
        EditRequest(Image.fromarray(np.arange(600, dtype=np.int32).reshape(20, 30), "I"), "a dog")
    )
    requests.append(
        EditRequest(Image.fromarray(np.linspace(0, 1, 600, dtype=np.float32).reshape(30, 20), "F"), "a dog")
    )
    results = editor.edit(requests)
    for request, result in zip(requests, results, strict=True):
        assert result.image.mode == "RGB" and result.image.size == request.image.size
        assert result.mask_soft.size == request.image.size and result.mask_binary.size == request.image.size
        assert set(np.unique(np.asarray(result.mask_binary))) <= {0, 255}
        assert result.model_width % 4 == 0 and result.model_height % 4 == 0
        assert max(result.model_width, result.model_height) == 32


def test_resolution_policy():
    assert model_resolution(512, 512, 512, 64) == (512, 512)
    assert model_resolution(640, 480, 512, 64) == (512, 384)
    assert model_resolution(1000, 10, 512, 64) == (512, 64)  # at least one multiple
    assert model_resolution(333, 500, 512, 64) == (320, 512)
    with pytest.raises(ValueError, match="zero size"):
        model_resolution(0, 10, 512, 64)


def test_rgba_is_composited_on_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_rgb(img).getpixel((0, 0)) == (255, 255, 255)


def test_prompt_embeddings_are_computed_once_per_unique_prompt(bundle, random_image):
    calls = []
    original = bundle.encode_prompts

    def counting(prompts):
        calls.append(list(prompts))
        return original(prompts)

    bundle.encode_prompts = counting
    try:
        editor = DiffEditor(bundle, params=FAST)
        img = random_image(10, 32, 32)
        editor.edit([EditRequest(img, "a red cat", "a cat", seed=s) for s in range(3)])
        editor.edit([EditRequest(img, "a red cat", "a dog", seed=4)])
    finally:
        del bundle.encode_prompts
    encoded = [p for call in calls for p in call]
    assert sorted(encoded) == sorted(["a red cat", "a cat", "", "a dog"])


def test_per_row_overrides_take_effect(editor, random_image):
    img = random_image(11, 32, 32)
    fewer = FAST.replace(num_mask_draws=2, encode_ratio=0.5, guidance_scale=1.0)
    a, b = editor.edit(
        [EditRequest(img, "a red cat", seed=1), EditRequest(img, "a red cat", seed=1, params=fewer)]
    )
    assert a.params == FAST and b.params == fewer
    assert (
        a.counters["unet_evals_mask"],
        a.counters["unet_evals_encode"],
        a.counters["unet_evals_decode"],
    ) == (6, 8, 16)
    assert (
        b.counters["unet_evals_mask"],
        b.counters["unet_evals_encode"],
        b.counters["unet_evals_decode"],
    ) == (4, 5, 5)


def test_sdedit_encoding_is_seeded_and_uses_no_model_calls(editor, random_image):
    img = random_image(12, 32, 32)
    p = FAST.replace(encode_method="noise")
    a, b = editor.edit(
        [EditRequest(img, "a red cat", seed=3, params=p), EditRequest(img, "a red cat", seed=3, params=p)]
    )
    assert a.counters["unet_evals_encode"] == 0 and torch.equal(a.latent, b.latent)


@pytest.mark.parametrize(
    "request_kwargs,error",
    [
        ({"query": ""}, "query .* is empty"),
        ({"query": "   "}, "query .* is empty"),
        ({"image": Image.new("RGB", (0, 0))}, "zero size"),
        ({"seed": -1}, "seed must be in"),
        ({"mask": np.zeros((3, 3), bool)}, "mask shape"),
    ],
)
def test_clear_errors(editor, random_image, request_kwargs, error):
    kwargs = {"image": random_image(0, 8, 8), "query": "a cat", **request_kwargs}
    with pytest.raises(ValueError, match=error):
        editor.edit([EditRequest(**kwargs)])


def test_mismatched_list_lengths_and_bad_types(editor, random_image):
    with pytest.raises(ValueError, match="list lengths differ: 2 images, 1 queries, 3 captions"):
        editor.edit_images([random_image(0, 8, 8)] * 2, ["a cat"], captions=["a", "b", "c"])
    with pytest.raises(TypeError, match="PIL image"):
        editor.edit([EditRequest(np.zeros((8, 8, 3)), "a cat")])
    with pytest.raises(TypeError, match="guidance_scale: expected a number, got string 'high'"):
        FAST.replace(guidance_scale="high")
    with pytest.raises(ValueError, match="unknown DiffEdit parameter"):
        EditParams.from_dict({"guidance": 2.0}, source="job.yaml")


def test_paste_background_keeps_input_pixels_outside_the_mask(editor, random_image):
    img = random_image(13, 36, 28)
    mask = np.zeros((28, 36), bool)
    mask[:, :12] = True
    pasted, plain = editor.edit(
        [
            EditRequest(img, "a red cat", mask=mask, params=FAST.replace(paste_background=True)),
            EditRequest(img, "a red cat", mask=mask),
        ]
    )
    a, b, src = (np.asarray(x, np.int16) for x in (pasted.image, plain.image, img))
    far = np.zeros((28, 36), bool)
    far[:, 20:] = True  # well outside the (latent-rounded, feathered) mask
    assert np.array_equal(a[far], src[far]) and not np.array_equal(b[far], src[far])
    assert np.array_equal(a[:, :8], b[:, :8])  # well inside: the edit itself
    with pytest.raises(TypeError, match="paste_background: expected true or false, got string 'yes'"):
        EditParams.from_dict({"paste_background": "yes"})


def test_vae_batch_cuts_vae_calls_apart_from_max_batch(bundle, random_image):
    """``vae_batch`` sets the images per VAE call (memory at full resolution), independently of the
    UNet's ``max_batch``; results do not depend on it."""
    requests = [EditRequest(random_image(i, 32, 32), "a red cat", "a blue cat", seed=i) for i in range(5)]
    calls = {"encode": [], "decode": []}
    enc = bundle.vae.encoder.register_forward_hook(lambda m, a, o: calls["encode"].append(a[0].shape[0]))
    dec = bundle.vae.decoder.register_forward_hook(lambda m, a, o: calls["decode"].append(a[0].shape[0]))
    try:
        small = DiffEditor(bundle, params=FAST, max_batch=64, vae_batch=2).edit(requests)
    finally:
        enc.remove()
        dec.remove()
    assert calls == {"encode": [2, 2, 1], "decode": [2, 2, 1]}
    whole = DiffEditor(bundle, params=FAST, max_batch=64).edit(requests)
    for a, b in zip(small, whole, strict=True):
        assert np.abs(np.asarray(a.image, np.int16) - np.asarray(b.image, np.int16)).max() <= 1
    with pytest.raises(ValueError, match="vae_batch"):
        DiffEditor(bundle, vae_batch=0)


def test_queries_on_one_image_share_its_encode_and_inversion(bundle, random_image):
    """2 images x 4 queries: one VAE encode and one inversion per image, each row charged a quarter:
    20 + 40/4 + 80 = 110 evaluations per row at the defaults (<= 115), against 140 alone; the edits are
    those of each row edited alone."""
    images = [random_image(10, 32, 32), random_image(11, 40, 32)]
    queries = ["a red cat", "a green cat", "a black cat", "a yellow cat"]
    requests = [
        EditRequest(img, q, "a blue cat", seed=s, id=f"{i}-{s}")
        for i, img in enumerate(images)
        for s, q in enumerate(queries)
    ]
    editor = DiffEditor(bundle, max_batch=64)
    results = editor.edit(requests)
    assert [r.counters["unet_evals"] for r in results] == [110] * 8
    assert sum(r.counters["unet_evals_encode"] for r in results) == 2 * 40
    assert sum(r.counters["vae_encodes"] for r in results) == 2
    for request, shared in zip(requests[::3], results[::3], strict=True):
        alone = DiffEditor(bundle, max_batch=64).edit([request])[0]
        assert alone.counters["unet_evals"] == 140
        assert np.abs(np.asarray(alone.image, np.int16) - np.asarray(shared.image, np.int16)).max() <= 1


def test_trajectory_cache_serves_later_calls_and_can_be_switched_off(bundle, random_image):
    request = EditRequest(random_image(12, 32, 32), "a red cat", "a blue cat", seed=5)
    again = EditRequest(request.image.copy(), "a green cat", "a blue cat", seed=6)  # equal pixels, new object
    editor = DiffEditor(bundle, params=FAST, max_batch=64)
    first = editor.edit([request])[0]
    second = editor.edit([again])[0]
    assert first.counters["unet_evals_encode"] == FAST.num_encode_steps and first.counters["vae_encodes"] == 1
    assert second.counters["unet_evals_encode"] == 0 and second.counters["vae_encodes"] == 0
    fresh = DiffEditor(bundle, params=FAST, max_batch=64, trajectory_cache=0)
    recomputed = fresh.edit([again])[0]
    assert recomputed.counters["unet_evals_encode"] == FAST.num_encode_steps
    assert np.array_equal(np.asarray(recomputed.image), np.asarray(second.image))
    assert fresh.edit([again])[0].counters["unet_evals_encode"] == FAST.num_encode_steps  # nothing kept


def test_sdedit_candidates_share_the_vae_encode_but_not_a_trajectory(bundle, random_image):
    """SDEdit's noise encode is per seed, so a request's candidates get their own trajectories (no cache
    entry, their own noise) but still one VAE encode of the one image."""
    from diffedit.scores import Scoring
    from diffedit.select import Selection

    params = FAST.replace(encode_method="noise")
    editor = DiffEditor(bundle, params, max_batch=64, scoring=Scoring(), selection=Selection(candidates=2))
    cands = editor.edit_candidates(
        [EditRequest(random_image(13, 32, 32), "a red cat", "a blue cat", seed=2)]
    )[0]
    assert [c.counters["vae_encodes"] for c in cands] == [1, 0]
    assert all(c.counters["unet_evals_encode"] == 0 for c in cands) and not editor._trajectories
    assert torch.equal(cands[0].input_latent, cands[1].input_latent)
    assert not torch.equal(cands[0].latent, cands[1].latent)  # each candidate its own noise

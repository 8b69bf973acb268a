"""The noise-level math and the three stages as pure functions, against diffusers and exact references."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from diffedit.decode import ddim_decode
from diffedit.encode import ddim_encode, noise_encode
from diffedit.mask import diffedit_mask, difference_map, gaussian_blur, normalize_map
from diffedit.modelcall import call_denoiser, from_eps, from_v, from_velocity, vp_denoiser
from diffedit.schedule import (
    add_noise,
    alpha_at,
    ddim_levels,
    ddim_timesteps,
    flow_levels,
    mask_level,
    transfer,
    vp_levels,
)
from diffedit.tiny import SD_SCHEDULER_CONFIG, gaussian_eps


def fake_eps(x, t, emb):
    """A per-sample nonlinear fake model: depends on its own latent, timestep and text only."""
    return torch.tanh(x * (1 + t.float().view(-1, 1, 1, 1) / 1000) + emb.mean(dim=(1, 2)).view(-1, 1, 1, 1))


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 50])
def test_timesteps_and_alphas_match_diffusers(spacing, steps, alphas):
    config = {**SD_SCHEDULER_CONFIG, "timestep_spacing": spacing}
    scheduler = DDIMScheduler.from_config(config)
    scheduler.set_timesteps(steps)
    assert torch.equal(ddim_timesteps(config, steps), scheduler.timesteps.flip(0).to(torch.int64))
    assert torch.allclose(alphas.float(), scheduler.alphas_cumprod, atol=1e-6)


def test_mask_level_is_diffusers_encode_timestep():
    levels = ddim_levels(SD_SCHEDULER_CONFIG, 50)
    assert int(levels.t[mask_level(levels, 0.5)]) == 481  # diffusers' generate_mask at strength 0.5, 50 steps
    assert int(levels.t[mask_level(levels, 1.0)]) == 981
    assert int(levels.t[mask_level(levels, 0.001)]) == 1


def _vp(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return a.sqrt(), (1 - a).sqrt()


def test_ddim_transfer_is_invertible_for_fixed_eps():
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    a1, a2 = torch.tensor([0.9, 0.5, 0.99]), torch.tensor([0.3, 0.1, 0.6])
    there = transfer(*from_eps(x, eps, *_vp(a1)), *_vp(a2))
    assert torch.allclose(transfer(*from_eps(there, eps, *_vp(a2)), *_vp(a1)), x, atol=1e-5)
    # From the clean state (a = 1) a transfer is the forward process with that eps.
    one = torch.ones(3)
    assert torch.allclose(
        transfer(*from_eps(x, eps, *_vp(one)), *_vp(a2)), add_noise(x, eps, *_vp(a2)), atol=1e-6
    )


def test_flow_transfer_is_one_euler_step_and_velocity_predictions_are_exact():
    """x' = alpha' x0-hat + sigma' eps-hat on a flow grid is x + (s' - s) v (flow-models notes), also
    from s = 1; and v -> (x0, eps) inverts x_s = (1 - s) x0 + s eps with v = eps - x0."""
    g = torch.Generator().manual_seed(0)
    x0, eps = (
        torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64),
        torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64),
    )
    s, s_to = (
        torch.tensor([1.0, 0.6, 0.3], dtype=torch.float64),
        torch.tensor([0.8, 0.1, 0.0], dtype=torch.float64),
    )
    x = add_noise(x0, eps, 1 - s, s)
    pred = from_velocity(x, eps - x0, s)
    torch.testing.assert_close(pred.x0, x0)
    torch.testing.assert_close(pred.eps, eps)
    v = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64)
    euler = x + (s_to - s).view(-1, 1, 1, 1) * v
    torch.testing.assert_close(transfer(*from_velocity(x, v, s), 1 - s_to, s_to), euler)
    # The VP v-prediction: v = alpha eps - sigma x0 gives back the pair.
    a, sg = _vp(torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64))
    xv = add_noise(x0, eps, a, sg)
    pred = from_v(xv, a.view(-1, 1, 1, 1) * eps - sg.view(-1, 1, 1, 1) * x0, a, sg)
    torch.testing.assert_close(pred.x0, x0)
    torch.testing.assert_close(pred.eps, eps)


@pytest.mark.parametrize(
    "config,mu",
    [
        ({"num_train_timesteps": 1000, "shift": 3.0}, None),  # SD3
        ({"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": True}, 1.15),  # FLUX at 1024²
    ],
)
@pytest.mark.parametrize("steps", [1, 4, 28])
def test_flow_levels_are_diffusers_flow_match_sigmas(config, mu, steps):
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    scheduler.set_timesteps(steps, mu=mu)
    levels = flow_levels(config, steps, mu=mu)
    assert levels.steps == steps and levels.kind == "flow"
    assert torch.equal(levels.sigma, scheduler.sigmas.flip(0))  # ascending, 0 first
    assert torch.equal(levels.alpha, 1 - scheduler.sigmas.flip(0))
    assert torch.equal(levels.t[1:], scheduler.timesteps.flip(0))
    # The mask's level on a flow grid is the one whose s is nearest the strength.
    k = mask_level(levels, 0.5)
    assert float((levels.sigma[k] - 0.5).abs()) == float((levels.sigma[1:] - 0.5).abs().min())


def test_alpha_at_clean_state_is_one(alphas):
    a = alpha_at(alphas, torch.tensor([-1, 0, 999]))
    assert a[0] == 1.0 and torch.isclose(a[1], alphas[0].float()) and torch.isclose(a[2], alphas[999].float())


def test_call_denoiser_chunking_does_not_change_results_and_counts_per_owner(alphas):
    g = torch.Generator().manual_seed(1)
    x, emb = torch.randn(7, 4, 3, 3, generator=g), torch.randn(7, 5, 6, generator=g)
    t = torch.arange(7) * 100
    owners = torch.tensor([0, 0, 1, 2, 2, 2, 1])
    evals = torch.zeros(3, dtype=torch.int64)
    fake = vp_denoiser(fake_eps)
    level = _vp(alpha_at(alphas, t))
    whole = call_denoiser(fake, x, t, emb, *level, max_batch=100)
    chunked = call_denoiser(fake, x, t, emb, *level, max_batch=2, owners=owners, evals=evals)
    assert torch.allclose(whole.eps, chunked.eps, atol=1e-6) and torch.allclose(
        whole.x0, chunked.x0, atol=1e-6
    )
    assert evals.tolist() == [2, 2, 3]
    with pytest.raises(ValueError, match="same batch size"):
        call_denoiser(fake, x, t[:3], emb, *level, max_batch=2)


@pytest.mark.parametrize("steps,tolerance", [(50, 0.05), (100, 0.025)])
def test_encode_then_decode_reconstructs_input(alphas, steps, tolerance):
    """Inversion and decoding agree: guidance 1, the same (unconditional) text, an all-ones mask.

    With the exact predictor of Gaussian data the only error is DDIM's discretisation: below 5 % of
    the latent's range at 50 steps, and it halves when the steps double (first order).
    """
    eps = vp_denoiser(gaussian_eps(alphas, sigma=0.5))
    x0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5
    emb = torch.zeros(3, 4, 8)
    levels = ddim_levels(SD_SCHEDULER_CONFIG, steps).upto(int(steps * 0.8))
    trajectory = ddim_encode(eps, x0, levels, emb, max_batch=4)
    assert len(trajectory) == len(levels) and trajectory[0] is x0
    # The encoded latent is (close to) unit-variance noise at tau_K, as DDIM encoding should give.
    assert 0.8 < float(trajectory[-1].std()) < 1.2
    y0 = ddim_decode(eps, trajectory, torch.ones(3, 1, 8, 8), levels, emb, emb, torch.ones(3), max_batch=4)
    relative = float((y0 - x0).abs().max() / x0.abs().max())
    assert relative < tolerance, relative


def test_encode_then_decode_tiny_unet_stays_finite(bundle):
    x0 = bundle.vae_encode(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    emb = bundle.encode_prompts(["", ""])
    levels = bundle.levels(10).upto(8)
    trajectory = ddim_encode(bundle.denoise, x0, levels, emb, max_batch=4)
    y0 = ddim_decode(
        bundle.denoise,
        trajectory,
        torch.ones(2, 1, 16, 16),
        levels,
        emb,
        emb,
        torch.ones(2),
        max_batch=4,
    )
    assert torch.isfinite(y0).all() and y0.shape == x0.shape


def test_all_zeros_mask_returns_clean_latent_exactly(bundle):
    """Outside the mask the last step takes the clean latent: with M = 0 the output is x_0, bit for bit."""
    x0 = bundle.vae_encode(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1)
    emb = bundle.encode_prompts(["a red cat", ""])
    levels = bundle.levels(10).upto(8)
    trajectory = ddim_encode(bundle.denoise, x0, levels, emb[[1, 1]], max_batch=4)
    y0 = ddim_decode(
        bundle.denoise,
        trajectory,
        torch.zeros(2, 1, 16, 16),
        levels,
        emb[[0, 0]],
        emb[[1, 1]],
        torch.full((2,), 7.5),
        max_batch=4,
    )
    assert torch.equal(y0, x0)


def test_decode_blends_with_the_same_timestep_latent(alphas):
    """Eq. 3: after the step to tau_{k-1}, outside the mask the latent *is* x(tau_{k-1})."""
    seen = []

    def recording_eps(x, t, emb):
        seen.append((x.clone(), int(t[0])))
        return torch.zeros_like(x)

    g = torch.Generator().manual_seed(0)
    trajectory = [torch.randn(1, 4, 4, 4, generator=g) for _ in range(4)]  # K = 3
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    ddim_decode(
        vp_denoiser(recording_eps),
        trajectory,
        mask,
        vp_levels(alphas, torch.tensor([1, 21, 41])),
        torch.zeros(1, 2, 2),
        torch.zeros(1, 2, 2),
        torch.ones(1),
        max_batch=8,
    )
    assert [t for _, t in seen] == [41, 21, 1]
    for (x, _), k in zip(seen[1:], [2, 1], strict=True):  # the latent the model sees at tau_k
        assert torch.equal(x[..., 2:, :], trajectory[k][..., 2:, :])


def test_decode_skips_unconditional_prediction_when_guidance_is_one(alphas):
    calls = []

    def counting_eps(x, t, emb):
        calls.append(x.shape[0])
        return torch.zeros_like(x)

    traj = [torch.zeros(3, 4, 2, 2)] * 3
    evals = torch.zeros(3, dtype=torch.int64)
    ddim_decode(
        vp_denoiser(counting_eps),
        traj,
        torch.ones(3, 1, 2, 2),
        vp_levels(alphas, torch.tensor([1, 21])),
        torch.zeros(3, 2, 2),
        torch.zeros(3, 2, 2),
        torch.tensor([1.0, 7.5, 1.0]),
        max_batch=16,
        evals=evals,
    )
    assert calls == [4, 4] and evals.tolist() == [2, 4, 2]


def test_difference_map_is_zero_when_texts_agree(bundle, alphas):
    x0 = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    emb = bundle.encode_prompts(["a red cat", "a red cat"])
    noises = [torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    t = torch.tensor([481, 481])
    maps = diffedit_mask(
        bundle.denoise,
        x0,
        noises,
        t,
        *_vp(alpha_at(alphas, t)),
        emb,
        emb,
        clip_quantile=torch.full((2,), 0.99),
        smoothing=torch.zeros(2),
        threshold=torch.full((2,), 0.5),
        max_batch=4,
    )
    assert torch.equal(maps.difference, torch.zeros(2, 16, 16))
    assert not maps.binary.any() and torch.equal(maps.soft, torch.zeros(2, 16, 16))


def test_difference_map_spends_no_evaluations_on_rows_whose_texts_agree(bundle, alphas):
    x0 = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    emb = bundle.encode_prompts(["a red cat", "a blue cat"])
    noises = [torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    t = torch.tensor([481, 481])
    evals = torch.zeros(2, dtype=torch.int64)
    d = difference_map(
        bundle.denoise,
        x0,
        noises,
        t,
        *_vp(alpha_at(alphas, t)),
        emb[[0, 0]],
        emb[[0, 1]],
        max_batch=4,
        evals=evals,
    )
    assert evals.tolist() == [0, 6] and torch.equal(d[0], torch.zeros(16, 16)) and (d[1] > 0).all()


def test_difference_map_averages_draws_and_channels(alphas):
    """With a fake model whose text effect is known, the map is exactly its mean |difference|."""

    def eps(x, t, emb):
        return x + emb[:, :1, :1].view(-1, 1, 1, 1) * torch.arange(4.0).view(1, 4, 1, 1)

    x0 = torch.zeros(1, 4, 2, 2)
    emb_q, emb_r = torch.full((1, 1, 1), 2.0), torch.full((1, 1, 1), 0.5)
    noises = [torch.randn(5, 4, 2, 2, generator=torch.Generator().manual_seed(0))]
    t = torch.tensor([481])
    evals = torch.zeros(1, dtype=torch.int64)
    d = difference_map(
        vp_denoiser(eps),
        x0,
        noises,
        t,
        *_vp(alpha_at(alphas, t)),
        emb_q,
        emb_r,
        max_batch=3,
        evals=evals,
    )
    assert torch.allclose(d, torch.full((1, 2, 2), 1.5 * 1.5), atol=1e-6)  # |2 - 0.5| * mean(0, 1, 2, 3)
    assert evals.tolist() == [10]  # n = 5 draws x 2 texts


def test_normalize_map_is_per_image_and_clips_extremes():
    d = torch.zeros(2, 10, 10)
    d[0, :5] = 1.0
    d[0, 0, 0] = 100.0  # one extreme value
    d[1] = torch.linspace(0, 5, 100).view(10, 10)
    soft = normalize_map(d, torch.tensor([0.99, 1.0]), torch.zeros(2))
    assert soft.min() == 0 and soft.max() == 1
    # The extreme pixel is clipped, so the half-image region still reaches 1 and stays above 0.5.
    assert (soft[0, :5] > 0.5).all() and (soft[0, 5:] == 0).all()
    assert torch.allclose(soft[1], torch.linspace(0, 1, 100).view(10, 10), atol=1e-6)
    # Image 1's map does not change with image 0's values.
    alone = normalize_map(d[1:], torch.tensor([1.0]), torch.zeros(1))
    assert torch.equal(alone[0], soft[1])


def test_gaussian_blur_preserves_constants_and_mass():
    m = torch.ones(1, 9, 9)
    assert torch.allclose(gaussian_blur(m, 1.5), m, atol=1e-6)
    spike = torch.zeros(1, 9, 9)
    spike[0, 4, 4] = 1
    blurred = gaussian_blur(spike, 1.0)
    assert torch.isclose(blurred.sum(), torch.tensor(1.0), atol=1e-5) and blurred[0, 4, 4] < 0.5


def test_noise_encode_is_the_forward_process(alphas):
    x0, noise = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    traj = noise_encode(x0, noise, vp_levels(alphas, torch.tensor([1, 101, 201])))
    assert len(traj) == 4 and traj[0] is x0
    assert torch.allclose(traj[3], alphas[201].float().sqrt() * x0 + (1 - alphas[201].float()).sqrt() * noise)

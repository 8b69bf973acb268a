"""The one model contract of every DiffEdit stage, and how samples are batched into it.

    DenoiseFn = Callable[[x (B, C, h, w), t (B,), cond (B, L, D), alpha (B,), sigma (B,)],
                         Prediction(x0 (B, C, h, w), eps (B, C, h, w))]

For a latent x at the noise level x = alpha x_0 + sigma eps (``diffedit.schedule.Levels``), the
denoiser evaluates its network at the time input ``t`` and returns the clean-latent and noise
predictions that the network's output implies at x's level. ``t`` is that level's own time input
everywhere but in inversion, which evaluates the network at the next, noisier level from the current
latent (DDIM eq. 14's approximation; step 2). Every parameterisation a model is trained in reduces to
this pair (``from_eps``, ``from_v``, ``from_velocity``), and with it one deterministic step is the same
formula on every model (``schedule.transfer``): the stages (mask, encode, decode) are written once.
Holding the network's own output fixed across a step, the pair gives DDIM's step and inversion on an
eps-model and exactly the Euler step and inverse Euler step, x' = x + (s' - s) v, on a flow model.

A fake model that honours this contract can stand in for the network in tests (``vp_denoiser`` wraps
a noise predictor). Stages flatten all the samples they need (rows x draws x prompts) and hand them to
``call_denoiser``, which cuts them into calls of at most ``max_batch`` samples and counts every sample
evaluated against the row that owns it. Each sample's prediction depends on that sample alone, so how
rows are cut into calls never changes a result (to float tolerance).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch


class Prediction(NamedTuple):
    x0: torch.Tensor  # (B, C, h, w) the clean latent the model predicts
    eps: torch.Tensor  # (B, C, h, w) the noise the model predicts


DenoiseFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], Prediction]
EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _coef(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return c.to(like.device, like.dtype).view(-1, 1, 1, 1)  # (B, 1, 1, 1)


def from_eps(x: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> Prediction:
    """A noise predictor's output: x0 = (x - sigma eps) / alpha (DDIM eq. 12's "predicted x_0").

    x, eps (B, C, h, w); alpha, sigma (B,), alpha > 0."""
    return Prediction((x - _coef(sigma, x) * eps) / _coef(alpha, x), eps)


def from_v(x: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> Prediction:
    """A VP v-prediction (Salimans & Ho 2022, "Progressive distillation", v = alpha eps - sigma x_0):
    eps = sigma x + alpha v, x0 = alpha x - sigma v. x, v (B, C, h, w); alpha, sigma (B,)."""
    a, s = _coef(alpha, x), _coef(sigma, x)
    return Prediction(a * x - s * v, s * x + a * v)


def from_velocity(x: torch.Tensor, v: torch.Tensor, s: torch.Tensor) -> Prediction:
    """A rectified-flow velocity v ~ eps - x_0 at x_s = (1 - s) x_0 + s eps:
    x0 = x - s v, eps = x + (1 - s) v (exact, also at s = 1). x, v (B, C, h, w); s (B,)."""
    s = _coef(s, x)
    return Prediction(x - s * v, x + (1 - s) * v)


def vp_denoiser(eps_fn: EpsFn) -> DenoiseFn:
    """The contract for a noise predictor ``eps_fn(x, t, cond) -> eps`` (a VP model: integer timesteps)."""

    def denoise(
        x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
    ) -> Prediction:
        return from_eps(x, eps_fn(x, t, cond).to(x.dtype), alpha, sigma)

    return denoise


def call_denoiser(
    fn: DenoiseFn,
    latents: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    *,
    max_batch: int,
    owners: torch.Tensor | None = None,
    evals: torch.Tensor | None = None,
) -> Prediction:
    """The predictions for N samples, in calls of at most ``max_batch`` samples.

    latents (N, C, h, w), t (N,), cond (N, L, D), alpha and sigma (N,) the latents' levels
    -> Prediction of (N, C, h, w) each.
    ``owners`` (N,) gives the row each sample belongs to; ``evals`` (rows,) int64 is incremented by
    the number of samples actually evaluated for each row.
    """
    n = latents.shape[0]
    if not (t.shape[0] == cond.shape[0] == alpha.shape[0] == sigma.shape[0] == n):
        raise ValueError(
            f"call_denoiser: latents, t, cond, alpha and sigma must have the same batch size, got "
            f"{n}, {t.shape[0]}, {cond.shape[0]}, {alpha.shape[0]}, {sigma.shape[0]}"
        )
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    x0s, epss = [], []
    for start in range(0, n, max_batch):
        stop = min(start + max_batch, n)
        x0, eps = fn(
            latents[start:stop], t[start:stop], cond[start:stop], alpha[start:stop], sigma[start:stop]
        )
        x0s.append(x0)
        epss.append(eps)
        if evals is not None and owners is not None:
            evals.index_add_(0, owners[start:stop].cpu(), torch.ones(stop - start, dtype=evals.dtype))
    return Prediction(torch.cat(x0s, dim=0), torch.cat(epss, dim=0))

"""DDIM noise-schedule math, as pure functions.

Notation follows DDIM (Song, Meng, Ermon, "Denoising Diffusion Implicit Models", ICLR 2021):
a_t is the cumulative product of (1 - beta) up to t ("alpha-bar" in DDPM, "alpha" in DDIM).
The clean latent is the state with a = 1 exactly; we call it tau_0.

The DDIM timesteps tau_1 < ... < tau_S of an S-step schedule are the ones diffusers'
``DDIMScheduler.set_timesteps`` gives for the same config (``timestep_spacing`` and ``steps_offset``
honoured), so a model's schedule means the same here as in diffusers.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def alphas_cumprod_from_config(config: dict[str, Any]) -> torch.Tensor:
    """a_t for t = 0..T-1 from a diffusers scheduler config.  # (T,) float64

    Supports the beta schedules of diffusers' DDIMScheduler: "linear", "scaled_linear"
    (Stable Diffusion) and "squaredcos_cap_v2" (Nichol & Dhariwal 2021, eq. 17).
    """
    T = int(config.get("num_train_timesteps", 1000))
    beta_start = float(config.get("beta_start", 0.0001))
    beta_end = float(config.get("beta_end", 0.02))
    schedule = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is not None:
        betas = torch.tensor(config["trained_betas"], dtype=torch.float64)
    elif schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    elif schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    elif schedule == "squaredcos_cap_v2":

        def alpha_bar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor(
            [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)], dtype=torch.float64
        )
    else:
        raise ValueError(f"unsupported beta_schedule {schedule!r} in the scheduler config")
    if config.get("rescale_betas_zero_snr"):
        raise ValueError(
            "schedulers with rescale_betas_zero_snr=True are not supported by DDIM inversion here"
        )
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_timesteps(config: dict[str, Any], num_steps: int) -> torch.Tensor:
    """tau_1 < ... < tau_S, ascending, as diffusers' DDIMScheduler.set_timesteps gives them.  # (S,) int64"""
    T = int(config.get("num_train_timesteps", 1000))
    if not 1 <= num_steps <= T:
        raise ValueError(f"num_inference_steps must be in [1, {T}], got {num_steps}")
    spacing = config.get("timestep_spacing", "leading")
    offset = int(config.get("steps_offset", 0))
    if spacing == "leading":
        ratio = T // num_steps
        ts = torch.arange(num_steps, dtype=torch.int64) * ratio + offset
    elif spacing == "trailing":
        ts = torch.round(torch.arange(T, 0, -T / num_steps, dtype=torch.float64)).flip(0).to(torch.int64) - 1
    elif spacing == "linspace":
        ts = torch.linspace(0, T - 1, num_steps, dtype=torch.float64).round().to(torch.int64)
    else:
        raise ValueError(f"unsupported timestep_spacing {spacing!r} in the scheduler config")
    return ts.clamp(0, T - 1)


def mask_timestep(timesteps: torch.Tensor, strength: float) -> int:
    """The timestep of the mask's noise draws at ``strength``: tau_k with k = floor(S * strength).

    This is the timestep diffusers' DiffEdit ``generate_mask`` uses for ``mask_encode_strength``.
    """
    k = min(max(int(len(timesteps) * strength), 1), len(timesteps))
    return int(timesteps[k - 1])


def add_noise(x0: torch.Tensor, noise: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """Forward process q(x_t | x_0) (DDPM eq. 4): x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps.

    x0, noise (B, C, h, w); a_t (B,) -> (B, C, h, w).
    """
    a = a_t.to(x0.dtype).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def ddim_transfer(
    x: torch.Tensor, eps: torch.Tensor, a_from: torch.Tensor, a_to: torch.Tensor
) -> torch.Tensor:
    """One deterministic DDIM move from noise level a_from to a_to (DDIM eq. 12 with sigma = 0).

        x0_pred = (x - sqrt(1 - a_from) eps) / sqrt(a_from)
        x'      = sqrt(a_to) x0_pred + sqrt(1 - a_to) eps

    Sampling when a_to > a_from, inversion (DDIM eq. 14's ODE run forwards) when a_to < a_from.
    x, eps (B, C, h, w); a_from, a_to (B,) -> (B, C, h, w).
    """
    af = a_from.to(x.dtype).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    at = a_to.to(x.dtype).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    x0_pred = (x - (1 - af).sqrt() * eps) / af.sqrt()
    return at.sqrt() * x0_pred + (1 - at).sqrt() * eps


def alpha_at(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """a_t for integer timesteps t, with t = -1 meaning the clean state (a = 1).  # (B,) float32"""
    a = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod])  # index 0 is the clean state
    return a[(t.to(torch.int64) + 1).cpu()].to(torch.float32)

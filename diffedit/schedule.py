"""Noise levels, as pure functions: the one schedule contract of every DiffEdit stage.

Every model here writes a noisy latent as

    x = alpha x_0 + sigma eps                                          (the level's two coefficients)

and every stage walks a grid of such levels, ``Levels``, index 0 the clean state (alpha 1, sigma 0),
then tau_1 < ... < tau_S ever noisier. Two parameterisations fill it:

* **DDIM / VP** (SD 1.x/2.x, SDXL; Song, Meng, Ermon, "Denoising Diffusion Implicit Models", ICLR 2021):
  alpha = sqrt(a_t), sigma = sqrt(1 - a_t), with a_t the cumulative product of (1 - beta) ("alpha-bar"
  in DDPM, "alpha" in DDIM). The timesteps tau_1 < ... < tau_S are the ones diffusers'
  ``DDIMScheduler.set_timesteps`` gives for the same config (``timestep_spacing`` and ``steps_offset``
  honoured); the model's time input is the integer timestep.
* **Rectified flow** (SD3/3.5, FLUX.1; Esser et al. 2024 "Scaling rectified flow transformers", Liu et
  al. 2023): x_s = (1 - s) x_0 + s eps, so alpha = 1 - s, sigma = s, with the sigmas s of diffusers'
  ``FlowMatchEulerDiscreteScheduler`` (its ``shift``, or FLUX's resolution-dependent ``mu``); the
  model's time input is s * num_train_timesteps, as the scheduler's ``timesteps``.

One deterministic step between two levels holds the clean-latent and noise predictions fixed
(``transfer``): on a VP grid it is the DDIM step (eq. 12 with sigma_t = 0), on a flow grid exactly one
Euler step of the flow ODE, x' = x + (s' - s) v (flow-models notes: both keep x0-hat and eps-hat).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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


def add_noise(
    x0: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """The forward process at a level: x = alpha x_0 + sigma eps (DDPM eq. 4; rectified flow's
    x_s = (1 - s) x_0 + s eps). x0, noise (B, C, h, w); alpha, sigma (B,) -> (B, C, h, w)."""
    a = alpha.to(x0.dtype).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    s = sigma.to(x0.dtype).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    return a * x0 + s * noise


def transfer(
    x0_hat: torch.Tensor, eps_hat: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """One deterministic move to the level (alpha, sigma), holding the predictions fixed:

        x' = alpha x0_hat + sigma eps_hat          (DDIM eq. 12 with sigma_t = 0; on a flow grid the Euler step)

    Sampling when the target is cleaner, inversion (DDIM eq. 14's ODE run forwards) when it is noisier.
    x0_hat, eps_hat (B, C, h, w); alpha, sigma (B,) -> (B, C, h, w).
    """
    a = alpha.to(x0_hat.dtype).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    s = sigma.to(x0_hat.dtype).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    return a * x0_hat + s * eps_hat


def alpha_at(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """a_t for integer timesteps t, with t = -1 meaning the clean state (a = 1).  # (B,) float32"""
    a = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod])  # index 0 is the clean state
    return a[(t.to(torch.int64) + 1).cpu()].to(torch.float32)


@dataclass(frozen=True)
class Levels:
    """A grid of noise levels, index 0 the clean state, then ever noisier: x_k = alpha_k x_0 + sigma_k eps."""

    t: torch.Tensor  # (S + 1,) the model's time input at each level (t[0] is never evaluated)
    alpha: torch.Tensor  # (S + 1,) float32, alpha[0] = 1
    sigma: torch.Tensor  # (S + 1,) float32, sigma[0] = 0
    kind: str = "ddim"  # "ddim" (VP) or "flow": how ``mask_level`` reads a strength

    def __post_init__(self) -> None:
        if not (self.t.shape == self.alpha.shape == self.sigma.shape) or self.t.ndim != 1:
            raise ValueError(
                f"Levels: t, alpha, sigma must be equal 1-d shapes, got {self.t.shape}, "
                f"{self.alpha.shape}, {self.sigma.shape}"
            )

    def __len__(self) -> int:
        return int(self.t.shape[0])

    @property
    def steps(self) -> int:
        """S: the steps of the grid (levels less the clean one)."""
        return len(self) - 1

    def upto(self, k: int) -> Levels:
        """The clean state and the first k levels (step 2 encodes to tau_k).  # (k + 1,) each"""
        if not 0 <= k <= self.steps:
            raise ValueError(f"Levels.upto: k must be in [0, {self.steps}], got {k}")
        return Levels(self.t[: k + 1], self.alpha[: k + 1], self.sigma[: k + 1], self.kind)

    def at(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(t, alpha, sigma) of the levels ``index`` (B,) int64.  # (B,) each"""
        index = index.to(torch.int64).cpu()
        return self.t[index], self.alpha[index], self.sigma[index]


def vp_levels(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> Levels:
    """The VP grid over ascending integer ``timesteps`` (S,): the clean state, then each timestep.

    alpha = sqrt(a), sigma = sqrt(1 - a) from a in float32 (``alpha_at``), the same arithmetic as
    diffusers' DDIMScheduler.step."""
    ts = torch.cat([torch.tensor([-1]), timesteps.to(torch.int64).cpu()])  # (S + 1,) -1 = clean
    a = alpha_at(alphas_cumprod, ts)  # (S + 1,) float32
    return Levels(t=ts, alpha=a.sqrt(), sigma=(1 - a).sqrt())


def ddim_levels(config: dict[str, Any], num_steps: int) -> Levels:
    """The DDIM grid of an S-step schedule: the clean state, then tau_1 < ... < tau_S (``ddim_timesteps``)."""
    return vp_levels(alphas_cumprod_from_config(config), ddim_timesteps(config, num_steps))


def flow_levels(
    config: dict[str, Any], num_steps: int, *, mu: float | None = None, sigmas: list[float] | None = None
) -> Levels:
    """The rectified-flow grid of an S-step schedule, as diffusers' ``FlowMatchEulerDiscreteScheduler``
    computes it (``set_timesteps(num_steps, sigmas=sigmas, mu=mu)``: the config's ``shift``, or the
    dynamic shift ``mu`` of FLUX), reversed so that index 0 is the clean state (s = 0).

    alpha = 1 - s, sigma = s; t = s * num_train_timesteps (the scheduler's ``timesteps``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    if not 1 <= num_steps <= scheduler.config.num_train_timesteps:
        raise ValueError(
            f"num_inference_steps must be in [1, {scheduler.config.num_train_timesteps}], got {num_steps}"
        )
    scheduler.set_timesteps(num_steps, sigmas=sigmas, mu=mu)
    s = scheduler.sigmas.to(torch.float32).flip(0)  # (S + 1,) ascending, s[0] = 0 (the terminal sigma)
    t = torch.cat([s.new_zeros(1), scheduler.timesteps.to(torch.float32).flip(0)])  # (S + 1,)
    return Levels(t=t, alpha=1 - s, sigma=s, kind="flow")


def mask_level(levels: Levels, strength: float) -> int:
    """The level k of the mask's noise draws at ``strength`` (1 <= k <= S).

    DDIM grid: k = floor(S * strength), the timestep diffusers' DiffEdit ``generate_mask`` uses for
    ``mask_encode_strength``. Flow grid: the level whose s is nearest ``strength`` (DiffEdit's "about
    half way" in the flow's own noise coordinate; a shifted grid's middle index lies far noisier, s ~ 0.75
    for SD3's shift 3)."""
    if levels.kind == "flow":
        return 1 + int((levels.sigma[1:] - strength).abs().argmin())
    return min(max(int(levels.steps * strength), 1), levels.steps)

"""DiffEdit step 2: encoding the input (Couairon et al. 2023, §3.2 "Step 2").

Deterministic encoding (DDIM inversion; Song et al. 2021, §4.3 and eq. 14 run forwards in time) of
the clean latent x_0 up to the encoding ratio r: K = floor(r * S) steps of the S-step decoding grid,
levels tau_1 < ... < tau_K (``schedule.Levels``). The paper encodes unconditionally; conditioning on
the reference text is an option. The latent of every level is kept, because step 3 blends with them.

Step k (k = 1..K) moves x(tau_{k-1}) to x(tau_k) with the network evaluated at the target level from
the current latent — the usual inversion approximation x(tau_{k-1}) ~ x(tau_k) — so that decoding,
which evaluates at (x(tau_k), tau_k), retraces it. The predictions are those of that output at the
latent's own level tau_{k-1} (``modelcall``), then

    x(tau_k) = alpha_k x0-hat + sigma_k eps-hat                        (``schedule.transfer``)

which is DDIM inversion on an eps-model, x(tau_k) = alpha_k (x - sigma_{k-1} eps) / alpha_{k-1} + sigma_k eps,
and on a flow model exactly the inverse Euler step x(s_k) = x(s_{k-1}) + (s_k - s_{k-1}) v-hat.
tau_0 is the clean latent (alpha 1, sigma 0).

``noise_encode`` is SDEdit's alternative (Meng et al. 2022): forward-noise x_0 to each tau_k with
one noise draw; it is no inversion and is kept as a baseline.
"""

from __future__ import annotations

import torch

from diffedit.modelcall import DenoiseFn, call_denoiser
from diffedit.schedule import Levels, add_noise, transfer


def ddim_encode(
    denoise: DenoiseFn,
    x0: torch.Tensor,
    levels: Levels,
    cond: torch.Tensor,
    *,
    max_batch: int,
    evals: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Deterministic inversion of x0 along ``levels`` (the clean state and tau_1..tau_K).

    x0 (B, C, h, w); cond (B, L, D) (the empty prompt's for unconditional encoding).
    -> [x(tau_0) = x0, x(tau_1), ..., x(tau_K)], each (B, C, h, w).
    """
    B = x0.shape[0]
    owners = torch.arange(B)
    # Every level's t, alpha and sigma on the device once: no host-to-device copy inside the loop.
    t = levels.t.to(x0.device)  # (K+1,)
    alpha, sigma = levels.alpha.to(x0.device), levels.sigma.to(x0.device)  # (K+1,) each
    trajectory = [x0]
    x = x0
    for k in range(1, len(levels)):
        at = (alpha[k - 1].expand(B), sigma[k - 1].expand(B))  # the latent's own level, tau_{k-1}
        pred = call_denoiser(
            denoise, x, t[k].expand(B), cond, *at, max_batch=max_batch, owners=owners, evals=evals
        )
        x = transfer(
            pred.x0.to(x.dtype), pred.eps.to(x.dtype), alpha[k].expand(B), sigma[k].expand(B)
        )  # (B, C, h, w)
        trajectory.append(x)
    return trajectory


def noise_encode(x0: torch.Tensor, noise: torch.Tensor, levels: Levels) -> list[torch.Tensor]:
    """SDEdit encoding: x(tau_k) = alpha_k x0 + sigma_k noise for k = 0..K (no model call).

    x0, noise (B, C, h, w) -> K+1 latents (B, C, h, w), the first x0.
    """
    B = x0.shape[0]
    noise = noise.to(x0.device, x0.dtype)
    trajectory = [x0]
    for k in range(1, len(levels)):
        alpha, sigma = levels.alpha[k].repeat(B), levels.sigma[k].repeat(B)  # (B,) each
        trajectory.append(add_noise(x0, noise, alpha.to(x0.device), sigma.to(x0.device)))
    return trajectory

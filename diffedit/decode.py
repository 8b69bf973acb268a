"""DiffEdit step 3: decoding with mask guidance (Couairon et al. 2023, §3.2 "Step 3", eq. 3).

Deterministic sampling from the encoded latent y(tau_K) = x(tau_K), conditioned on the query with
classifier-free guidance (Ho & Salimans 2022) applied to both predictions,
p = p_u + g (p_Q - p_u) for p in (x0-hat, eps-hat) — on a flow model the same as guiding the velocity,
since both are affine in it. Each step, from tau_k to tau_{k-1}, is ``schedule.transfer`` (the DDIM
step; on a flow grid the Euler step), and then the region outside the mask M takes the encoded
latent of that same level:

    y'(tau_{k-1}) = M * y(tau_{k-1}) + (1 - M) * x(tau_{k-1})        (paper, eq. 3)

so the last step (to tau_0, the clean state) ends on the clean input latent outside the mask,
exactly. (diffusers' deprecated pipeline blends with the latent one step noisier and never restores
the clean latent.)
"""

from __future__ import annotations

import torch

from diffedit.modelcall import DenoiseFn, call_denoiser
from diffedit.schedule import Levels, transfer


def ddim_decode(
    denoise: DenoiseFn,
    trajectory: list[torch.Tensor],
    mask: torch.Tensor,
    levels: Levels,
    cond: torch.Tensor,
    cond_uncond: torch.Tensor,
    guidance_scale: torch.Tensor,
    *,
    max_batch: int,
    evals: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mask-guided deterministic decoding.

    trajectory: [x(tau_0), ..., x(tau_K)] from step 2, each (B, C, h, w); mask (B, 1, h, w) in
    [0, 1], 1 = edit; levels: the clean state and tau_1..tau_K; cond, cond_uncond (B, L, D);
    guidance_scale (B,). -> y(tau_0) (B, C, h, w). Rows whose guidance is exactly 1 need no
    unconditional prediction and get none (1 evaluation per step instead of 2).
    """
    K = levels.steps
    if len(trajectory) != K + 1:
        raise ValueError(f"ddim_decode: trajectory has {len(trajectory)} latents for {K} levels (need K + 1)")
    y = trajectory[K]
    B = y.shape[0]
    rows = torch.arange(B)
    g = guidance_scale.to(y.device, y.dtype).view(B, 1, 1, 1)  # (B, 1, 1, 1)
    guided = (guidance_scale != 1.0).cpu()  # (B,) rows that need an unconditional prediction
    gi = rows[guided]  # (G,)
    m = mask.to(y.device, y.dtype)  # (B, 1, h, w)
    # Every level's t, alpha and sigma on the device once: no host-to-device copy inside the loop.
    t_all = levels.t.to(y.device)  # (K+1,)
    alpha, sigma = levels.alpha.to(y.device), levels.sigma.to(y.device)  # (K+1,) each
    gi_dev = gi.to(y.device)
    owners = torch.cat([rows, gi], dim=0)  # (B + G,) the row of each evaluated sample
    for k in range(K, 0, -1):
        t = t_all[k].expand(B)  # (B,)
        # Conditional predictions for every row, unconditional ones for the guided rows.  # (B + G, ...)
        latents = torch.cat([y, y[gi_dev]], dim=0)
        emb = torch.cat([cond, cond_uncond[gi_dev]], dim=0)
        a_k, s_k = alpha[k].expand(B + len(gi)), sigma[k].expand(B + len(gi))  # (B + G,) y's level
        pred = call_denoiser(
            denoise,
            latents,
            torch.cat([t, t[gi_dev]]),
            emb,
            a_k,
            s_k,
            max_batch=max_batch,
            owners=owners,
            evals=evals,
        )
        x0, eps = pred.x0[:B].to(y.dtype), pred.eps[:B].to(y.dtype)  # (B, C, h, w) each
        if len(gi):
            x0_u, eps_u = pred.x0[B:].to(y.dtype), pred.eps[B:].to(y.dtype)  # (G, C, h, w) each
            x0[gi_dev] = x0_u + g[gi_dev] * (x0[gi_dev] - x0_u)
            eps[gi_dev] = eps_u + g[gi_dev] * (eps[gi_dev] - eps_u)
        y = transfer(x0, eps, alpha[k - 1].expand(B), sigma[k - 1].expand(B))  # (B, C, h, w) at tau_{k-1}
        y = m * y + (1 - m) * trajectory[k - 1]  # paper eq. 3
    return y

"""DiffEdit step 3: decoding with mask guidance (Couairon et al. 2023, §3.2 "Step 3", eq. 3).

DDIM sampling from the encoded latent y(tau_K) = x(tau_K), conditioned on the query with
classifier-free guidance (Ho & Salimans 2022): eps = eps_u + g (eps_Q - eps_u). After every step,
from tau_k to tau_{k-1}, the region outside the mask M takes the encoded latent of that same
timestep:

    y'(tau_{k-1}) = M * y(tau_{k-1}) + (1 - M) * x(tau_{k-1})        (paper, eq. 3)

so the last step (to tau_0, the clean state, a = 1) ends on the clean input latent outside the
mask, exactly. (diffusers' deprecated pipeline blends with the latent one step noisier and never
restores the clean latent.)
"""

from __future__ import annotations

import torch

from diffedit.modelcall import EpsFn, call_eps
from diffedit.schedule import alpha_at, ddim_transfer


def ddim_decode(
    eps_fn: EpsFn,
    trajectory: list[torch.Tensor],
    mask: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    emb_cond: torch.Tensor,
    emb_uncond: torch.Tensor,
    guidance_scale: torch.Tensor,
    *,
    max_batch: int,
    evals: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mask-guided DDIM decoding.

    trajectory: [x(tau_0), ..., x(tau_K)] from step 2, each (B, C, h, w); mask (B, 1, h, w) in
    [0, 1], 1 = edit; timesteps (K,) ascending; emb_cond, emb_uncond (B, L, D); guidance_scale (B,).
    -> y(tau_0) (B, C, h, w). Rows whose guidance is exactly 1 need no unconditional prediction and
    get none (1 evaluation per step instead of 2).
    """
    K = len(timesteps)
    if len(trajectory) != K + 1:
        raise ValueError(
            f"ddim_decode: trajectory has {len(trajectory)} latents for {K} timesteps (need K + 1)"
        )
    y = trajectory[K]
    B = y.shape[0]
    rows = torch.arange(B)
    g = guidance_scale.to(y.device, y.dtype).view(B, 1, 1, 1)  # (B, 1, 1, 1)
    guided = (guidance_scale != 1.0).cpu()  # (B,) rows that need an unconditional prediction
    gi = rows[guided]  # (G,)
    m = mask.to(y.device, y.dtype)
    ts = torch.cat([torch.tensor([-1]), timesteps.to(torch.int64).cpu()])  # (K+1,) -1 = clean
    # Every step's timestep and a on the device once: no host-to-device copy inside the loop.
    ts_dev = ts.to(y.device)  # (K+1,)
    a = alpha_at(alphas_cumprod, ts).to(y.device)  # (K+1,)
    gi_dev = gi.to(y.device)
    owners = torch.cat([rows, gi], dim=0)  # (B + G,) the row of each evaluated sample
    for k in range(K, 0, -1):
        t = ts_dev[k].expand(B)  # (B,)
        # Conditional predictions for every row, unconditional ones for the guided rows.  # (B + G, ...)
        latents = torch.cat([y, y[gi_dev]], dim=0)
        emb = torch.cat([emb_cond, emb_uncond[gi_dev]], dim=0)
        t_all = torch.cat([t, t[gi_dev]], dim=0)
        eps_all = call_eps(eps_fn, latents, t_all, emb, max_batch=max_batch, owners=owners, evals=evals)
        eps = eps_all[:B].to(y.dtype)  # (B, C, h, w)
        if len(gi):
            eps_u = eps_all[B:].to(y.dtype)  # (G, C, h, w)
            eps[gi_dev] = eps_u + g[gi_dev] * (eps[gi_dev] - eps_u)
        y = ddim_transfer(y, eps, a[k].expand(B), a[k - 1].expand(B))  # (B, C, h, w) at tau_{k-1}
        y = m * y + (1 - m) * trajectory[k - 1]  # paper eq. 3
    return y

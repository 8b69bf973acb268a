"""DiffEdit step 2: encoding the input (Couairon et al. 2023, §3.2 "Step 2").

Deterministic DDIM encoding (DDIM inversion; Song et al. 2021, §4.3 and eq. 14 run forwards in
time) of the clean latent x_0 up to the encoding ratio r: K = floor(r * S) steps of an S-step DDIM
schedule, tau_1 < ... < tau_K. The paper encodes unconditionally; conditioning on the reference
text is an option. The latent of every timestep is kept, because step 3 blends with them.

Step k (k = 1..K) moves x(tau_{k-1}) to x(tau_k) with the noise predicted at the target timestep
from the current latent, eps(x(tau_{k-1}), tau_k) — the usual inversion approximation
x(tau_{k-1}) ~ x(tau_k) — so that decoding, which evaluates eps(x(tau_k), tau_k), retraces it.
tau_0 is the clean latent with a = 1 exactly.

``noise_encode`` is SDEdit's alternative (Meng et al. 2022): forward-noise x_0 to each tau_k with
one noise draw; it is no inversion and is kept as a baseline.
"""

from __future__ import annotations

import torch

from diffedit.modelcall import EpsFn, call_eps
from diffedit.schedule import add_noise, alpha_at, ddim_transfer


def ddim_encode(
    eps_fn: EpsFn,
    x0: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    text_embeddings: torch.Tensor,
    *,
    max_batch: int,
    evals: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """DDIM inversion of x0 along ``timesteps``.

    x0 (B, C, h, w); timesteps (K,) ascending tau_1..tau_K; text_embeddings (B, L, D) (the empty
    prompt's for unconditional encoding). -> [x(tau_0) = x0, x(tau_1), ..., x(tau_K)], each (B, C, h, w).
    """
    B = x0.shape[0]
    owners = torch.arange(B)
    ts = torch.cat([torch.tensor([-1]), timesteps.to(torch.int64).cpu()])  # (K+1,) -1 = clean
    # Every step's timestep and a on the device once: no host-to-device copy inside the loop.
    ts_dev = ts.to(x0.device)  # (K+1,)
    a = alpha_at(alphas_cumprod, ts).to(x0.device)  # (K+1,)
    trajectory = [x0]
    x = x0
    for k in range(1, len(ts)):
        t = ts_dev[k].expand(B)  # (B,)
        eps = call_eps(eps_fn, x, t, text_embeddings, max_batch=max_batch, owners=owners, evals=evals)
        x = ddim_transfer(x, eps.to(x.dtype), a[k - 1].expand(B), a[k].expand(B))  # (B, C, h, w)
        trajectory.append(x)
    return trajectory


def noise_encode(
    x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor
) -> list[torch.Tensor]:
    """SDEdit encoding: x(tau_k) = sqrt(a_k) x0 + sqrt(1 - a_k) noise for k = 0..K (no model call).

    x0, noise (B, C, h, w); timesteps (K,) ascending -> K+1 latents (B, C, h, w), the first x0.
    """
    B = x0.shape[0]
    trajectory = [x0]
    for t in timesteps.to(torch.int64).cpu():
        a = alpha_at(alphas_cumprod, t.repeat(B)).to(x0.device)  # (B,)
        trajectory.append(add_noise(x0, noise.to(x0.device, x0.dtype), a))
    return trajectory

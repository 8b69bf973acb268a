"""DiffEdit step 1: the editing mask (Couairon et al. 2023, §3.2 "Step 1", fig. 2).

Noise the input latent at strength s with n independent draws, predict the noise once conditioned
on the query Q and once on the reference text R, and average |eps_Q - eps_R| over draws and latent
channels. The result is a spatial map that is large where the two texts disagree about the image.
Extreme values are clipped at a per-image quantile, the map is rescaled to [0, 1] per image,
optionally smoothed, and binarised at a threshold (0.5 in the paper).

Everything is per image: no statistic is shared across a batch (diffusers' deprecated pipeline
normalises by the mean over the whole batch, so an image's mask depends on its batch-mates).
The paper computes eps_Q and eps_R without classifier-free guidance; so do we (2n evaluations).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from diffedit.modelcall import EpsFn, call_eps
from diffedit.schedule import add_noise


@dataclass(frozen=True)
class MaskMaps:
    difference: torch.Tensor  # (B, h, w) mean |eps_Q - eps_R| over draws and channels, before any clipping
    soft: torch.Tensor  # (B, h, w) in [0, 1]: clipped, rescaled per image, smoothed
    binary: torch.Tensor  # (B, h, w) bool: soft > threshold


def difference_map(
    eps_fn: EpsFn,
    x0: torch.Tensor,
    noises: list[torch.Tensor],
    t: torch.Tensor,
    a_t: torch.Tensor,
    emb_query: torch.Tensor,
    emb_reference: torch.Tensor,
    *,
    max_batch: int,
    evals: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean |eps(x_t, t, Q) - eps(x_t, t, R)| over each row's draws and the channels.

    x0 (B, C, h, w) clean latents; noises[i] (n_i, C, h, w) row i's draws; t (B,) the rows' mask
    timesteps and a_t (B,) their a values; emb_query, emb_reference (B, L, D). -> (B, h, w).
    All rows' draws, for both texts, are evaluated together in calls of at most ``max_batch``.
    """
    B = x0.shape[0]
    if len(noises) != B:
        raise ValueError(f"difference_map: {len(noises)} noise tensors for {B} rows")
    out = torch.zeros(B, *x0.shape[2:], dtype=x0.dtype, device=x0.device)  # (B, h, w)
    # Where Q and R embed identically, eps_Q - eps_R is zero by definition: no evaluation is spent
    # (and float rounding between batch positions cannot fake a difference).
    active = [i for i in range(B) if not torch.equal(emb_query[i], emb_reference[i])]
    if not active:
        return out
    counts = [int(noises[i].shape[0]) for i in active]
    rows = torch.tensor(active)
    owners = torch.repeat_interleave(rows, torch.tensor(counts))  # (N,) N = sum of the active rows' n_i
    noise = torch.cat([noises[i] for i in active], dim=0).to(x0.device, x0.dtype)  # (N, C, h, w)
    x_t = add_noise(x0[owners], noise, a_t[owners])  # (N, C, h, w)
    # One flat batch: first every draw with Q, then every draw with R.  # (2N, ...)
    latents = torch.cat([x_t, x_t], dim=0)
    ts = t[owners].repeat(2)
    emb = torch.cat([emb_query[owners], emb_reference[owners]], dim=0)
    eps = call_eps(eps_fn, latents, ts, emb, max_batch=max_batch, owners=owners.repeat(2), evals=evals)
    eps_q, eps_r = eps.to(x0.dtype).chunk(2, dim=0)  # (N, C, h, w) each
    per_draw = (eps_q - eps_r).abs().mean(dim=1)  # (N, h, w): mean over channels
    out.index_add_(0, owners.to(out.device), per_draw)
    n = torch.ones(B, dtype=out.dtype)
    n[rows] = torch.tensor(counts, dtype=out.dtype)
    return out / n.to(out.device).view(B, 1, 1)  # (B, h, w)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, h, w) maps with reflect padding; sigma in pixels (0 = identity)."""
    if sigma <= 0:
        return maps
    radius = max(1, int(3 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()  # (k,)
    img = maps.unsqueeze(1)  # (B, 1, h, w)
    pad_h = min(radius, img.shape[-2] - 1)
    pad_w = min(radius, img.shape[-1] - 1)
    kh = kernel[radius - pad_h : radius + pad_h + 1]
    kw = kernel[radius - pad_w : radius + pad_w + 1]
    img = F.pad(img, (pad_w, pad_w, pad_h, pad_h), mode="reflect") if (pad_h or pad_w) else img
    img = F.conv2d(img, (kh / kh.sum()).view(1, 1, -1, 1))  # blur along h
    img = F.conv2d(img, (kw / kw.sum()).view(1, 1, 1, -1))  # blur along w
    return img.squeeze(1)  # (B, h, w)


def normalize_map(
    difference: torch.Tensor, clip_quantile: torch.Tensor, smoothing: torch.Tensor
) -> torch.Tensor:
    """Remove extremes and rescale to [0, 1], each image on its own.

    difference (B, h, w); clip_quantile, smoothing (B,) -> soft (B, h, w) in [0, 1].
    Steps: clip at the image's ``clip_quantile`` quantile; min-max rescale to [0, 1]; optional
    Gaussian smoothing (sigma in latent pixels), then rescale again. A flat map (max - min below
    1e-6 of its scale, e.g. query == reference text) carries no location and gives an all-zero mask.
    """
    out = []
    for d, q, s in zip(difference, clip_quantile.tolist(), smoothing.tolist(), strict=True):
        d = torch.minimum(d, torch.quantile(d.flatten(), q))  # (h, w)
        d = _rescale(d)
        if s > 0:
            d = _rescale(gaussian_blur(d.unsqueeze(0), s).squeeze(0))
        out.append(d)
    return torch.stack(out, dim=0)  # (B, h, w)


def _rescale(d: torch.Tensor) -> torch.Tensor:
    lo, hi = d.min(), d.max()
    span = hi - lo
    if span <= 1e-6 * float(hi.abs()) or span == 0:
        return torch.zeros_like(d)
    return (d - lo) / span


def diffedit_mask(
    eps_fn: EpsFn,
    x0: torch.Tensor,
    noises: list[torch.Tensor],
    t: torch.Tensor,
    a_t: torch.Tensor,
    emb_query: torch.Tensor,
    emb_reference: torch.Tensor,
    *,
    clip_quantile: torch.Tensor,
    smoothing: torch.Tensor,
    threshold: torch.Tensor,
    max_batch: int,
    evals: torch.Tensor | None = None,
) -> MaskMaps:
    """Step 1 end to end: difference map, soft mask, binary mask. Per-row parameters are (B,) tensors."""
    diff = difference_map(
        eps_fn, x0, noises, t, a_t, emb_query, emb_reference, max_batch=max_batch, evals=evals
    )  # (B, h, w)
    soft = normalize_map(diff, clip_quantile, smoothing)  # (B, h, w)
    binary = soft > threshold.to(soft.device).view(-1, 1, 1)  # (B, h, w)
    return MaskMaps(difference=diff, soft=soft, binary=binary)

"""DiffEdit step 1: the editing mask (Couairon et al. 2023, §3.2 "Step 1", fig. 2).

Noise the input latent at strength s with n independent draws, predict the noise once conditioned
on the query Q and once on the reference text R, and average |eps_Q - eps_R| over draws and latent
channels. (The noise prediction is the denoiser contract's eps-hat, ``diffedit.modelcall``; on a flow
model eps-hat = x_s + (1 - s) v-hat, so the map is (1 - s) |v_Q - v_R|, the same map once rescaled:
absolute, never the signed channel mean, which can cancel.) The result is a spatial map that is large where the two texts disagree about the image.
Extreme values are clipped at a per-image quantile, the map is rescaled to [0, 1] per image,
optionally smoothed, and binarised at a threshold (0.5 in the paper).

Beyond the paper (``EditParams`` mask fields; the paper's recipe is ``params.PAPER_MASK``):

* ``mask_cover="union"``: the contrast |eps_Q - eps_R| fires where the two texts *disagree*, so for a
  shape edit (circle -> star) it lights the parts of the two footprints that differ and misses the
  rest of the object that must be repainted. The union cover also predicts the noise with the empty
  prompt and takes the per-prompt relevance maps |eps_Q - eps_0| and |eps_R - eps_0| (each rescaled
  like the contrast map and thresholded at ``mask_union_threshold``): they light every object the
  texts describe. The mask becomes the contrast mask plus the connected components of the relevance
  masks that it touches (morphological reconstruction, 8-connected): the whole old and new objects,
  but not the other objects of the scene. Costs n more evaluations (3n in all).
* ``mask_closing``: morphological closing (dilate then erode) by a square of that radius in latent cells.
* ``mask_fill_holes``: fill the holes of the binary mask (background components not reaching the border).
* ``mask_dilation``: grow the binary mask by that many latent cells (square structuring element).

They run in this order, after thresholding: union, closing, hole filling, dilation.

Everything is per image: no statistic is shared across a batch (diffusers' deprecated pipeline
normalises by the mean over the whole batch, so an image's mask depends on its batch-mates).
The paper computes eps_Q and eps_R without classifier-free guidance; so do we (2n evaluations).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from diffedit.modelcall import DenoiseFn, call_denoiser
from diffedit.schedule import add_noise


@dataclass(frozen=True)
class MaskMaps:
    difference: torch.Tensor  # (B, h, w) mean |eps_Q - eps_R| over draws and channels, before any clipping
    soft: torch.Tensor  # (B, h, w) in [0, 1]: clipped, rescaled per image, smoothed (union: max with
    #   the relevance of the objects the mask covers)
    binary: torch.Tensor  # (B, h, w) bool: soft > threshold, then union / closing / holes / dilation


@dataclass(frozen=True)
class ContrastMaps:
    """The raw maps of step 1, before any clipping: means over each row's draws and the channels."""

    difference: torch.Tensor  # (B, h, w) |eps_Q - eps_R|
    relevance_query: torch.Tensor  # (B, h, w) |eps_Q - eps_0| (zeros for rows without ``relevance``)
    relevance_reference: torch.Tensor  # (B, h, w) |eps_R - eps_0| (zeros for rows without ``relevance``)


def contrast_maps(
    denoise: DenoiseFn,
    x0: torch.Tensor,
    noises: list[torch.Tensor],
    t: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    emb_query: torch.Tensor,
    emb_reference: torch.Tensor,
    *,
    max_batch: int,
    evals: torch.Tensor | None = None,
    emb_empty: torch.Tensor | None = None,
    relevance: torch.Tensor | None = None,
) -> ContrastMaps:
    """Mean |eps(x_t, t, Q) - eps(x_t, t, R)| over each row's draws and the channels, and for the rows
    with ``relevance`` also |eps_Q - eps_0| and |eps_R - eps_0| (0 = ``emb_empty``, the empty prompt).

    x0 (B, C, h, w) clean latents; noises[i] (n_i, C, h, w) row i's draws; t, alpha, sigma (B,) the
    rows' mask levels (``schedule.Levels``); emb_query, emb_reference, emb_empty (B, L, D); relevance
    (B,) bool or None. All rows' draws, for every text, are evaluated together in calls of at most
    ``max_batch``: first every draw with Q, then every draw with R, then the relevance rows' draws
    with the empty prompt (so the Q/R layout, and the contrast, do not depend on ``relevance``).
    """
    B = x0.shape[0]
    if len(noises) != B:
        raise ValueError(f"contrast_maps: {len(noises)} noise tensors for {B} rows")
    want = torch.zeros(B, dtype=torch.bool) if relevance is None else relevance.to("cpu", torch.bool)
    if want.any() and emb_empty is None:
        raise ValueError("contrast_maps: relevance maps need emb_empty")
    zeros = torch.zeros(B, *x0.shape[2:], dtype=x0.dtype, device=x0.device)  # (B, h, w)
    diff, rel_q, rel_r = zeros.clone(), zeros.clone(), zeros.clone()
    # Where Q and R embed identically, eps_Q - eps_R is zero by definition: no evaluation is spent
    # (and float rounding between batch positions cannot fake a difference); there is nothing to edit.
    active = [i for i in range(B) if not torch.equal(emb_query[i], emb_reference[i])]
    if not active:
        return ContrastMaps(diff, rel_q, rel_r)
    counts = [int(noises[i].shape[0]) for i in active]
    rows = torch.tensor(active)
    owners = torch.repeat_interleave(rows, torch.tensor(counts))  # (N,) N = sum of the active rows' n_i
    noise = torch.cat([noises[i] for i in active], dim=0).to(x0.device, x0.dtype)  # (N, C, h, w)
    x_t = add_noise(x0[owners], noise, alpha[owners], sigma[owners])  # (N, C, h, w)
    with_empty = want[owners]  # (N,) the draws of relevance rows
    # One flat batch: every draw with Q, every draw with R, then the relevance draws with 0.  # (2N + E, ...)
    latents = torch.cat([x_t, x_t, x_t[with_empty]], dim=0)
    ts = torch.cat([t[owners], t[owners], t[owners][with_empty]])
    emb_parts = [emb_query[owners], emb_reference[owners]]
    if with_empty.any():
        emb_parts.append(emb_empty[owners][with_empty.to(emb_empty.device)])
    emb = torch.cat(emb_parts, dim=0)
    who = torch.cat([owners, owners, owners[with_empty]])
    alphas = torch.cat([alpha[owners], alpha[owners], alpha[owners][with_empty]])  # (2N + E,)
    sigmas = torch.cat([sigma[owners], sigma[owners], sigma[owners][with_empty]])  # (2N + E,)
    pred = call_denoiser(
        denoise, latents, ts, emb, alphas, sigmas, max_batch=max_batch, owners=who, evals=evals
    )
    eps = pred.eps.to(x0.dtype)  # (2N + E, C, h, w)
    N = owners.shape[0]
    eps_q, eps_r, eps_0 = eps[:N], eps[N : 2 * N], eps[2 * N :]  # (N, ...), (N, ...), (E, ...)
    dev_owners = owners.to(x0.device)
    diff.index_add_(0, dev_owners, (eps_q - eps_r).abs().mean(dim=1))  # (N, h, w): mean over channels
    if with_empty.any():
        sel = with_empty.to(x0.device)
        rel_q.index_add_(0, dev_owners[sel], (eps_q[sel] - eps_0).abs().mean(dim=1))
        rel_r.index_add_(0, dev_owners[sel], (eps_r[sel] - eps_0).abs().mean(dim=1))
    n = torch.ones(B, dtype=x0.dtype)
    n[rows] = torch.tensor(counts, dtype=x0.dtype)
    n = n.to(x0.device).view(B, 1, 1)
    return ContrastMaps(diff / n, rel_q / n, rel_r / n)


def difference_map(
    denoise: DenoiseFn,
    x0: torch.Tensor,
    noises: list[torch.Tensor],
    t: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    emb_query: torch.Tensor,
    emb_reference: torch.Tensor,
    *,
    max_batch: int,
    evals: torch.Tensor | None = None,
) -> torch.Tensor:
    """The paper's map alone: ``contrast_maps(...).difference``.  # (B, h, w)"""
    return contrast_maps(
        denoise, x0, noises, t, alpha, sigma, emb_query, emb_reference, max_batch=max_batch, evals=evals
    ).difference


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


# --------------------------------------------------------------------------- binary morphology
# Masks are (B, h, w) bool on the latent grid; structuring elements are squares (8-connectivity).


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation by a (2 radius + 1)^2 square; outside the image counts as empty.  # (B, h, w)"""
    if radius <= 0:
        return mask
    m = mask.float().unsqueeze(1)  # (B, 1, h, w)
    return F.max_pool2d(m, 2 * radius + 1, stride=1, padding=radius).squeeze(1) > 0.5


def erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary erosion by a (2 radius + 1)^2 square; outside the image counts as inside the mask, so
    a mask touching the border is not eaten from there.  # (B, h, w)"""
    return ~dilate(~mask, radius)


def close(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Morphological closing (dilate, then erode): fills gaps and notches narrower than the square.

    Computed on a canvas padded with ``radius`` empty cells and cropped back, so the image border
    is not a wall the closing fills up to (erosion alone counts the outside as inside)."""
    if radius <= 0:
        return mask
    padded = F.pad(mask, (radius, radius, radius, radius), value=False)  # (B, h + 2r, w + 2r)
    return erode(dilate(padded, radius), radius)[:, radius:-radius, radius:-radius]


def reconstruct(marker: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Morphological reconstruction: the 8-connected components of ``mask`` that ``marker`` touches."""
    x = marker & mask
    while True:
        y = dilate(x, 1) & mask
        if torch.equal(y, x):
            return x
        x = y


def fill_holes(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` with its holes filled: empty components that do not reach the image border."""
    outside = ~mask
    border = torch.zeros_like(mask)
    border[:, 0, :] = border[:, -1, :] = True
    border[:, :, 0] = border[:, :, -1] = True
    return mask | (outside & ~reconstruct(border, outside))


def union_cover(
    binary: torch.Tensor, relevance_query: torch.Tensor, relevance_reference: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``binary`` plus the components of the relevance masks (soft relevance maps in [0, 1] above
    ``threshold``) that it touches; and the added objects' soft relevance.  # (B, h, w) bool, float"""
    objects = (relevance_query > threshold) | (relevance_reference > threshold)
    touched = reconstruct(binary, objects)
    soft = torch.where(touched, torch.maximum(relevance_query, relevance_reference), 0.0)
    return binary | touched, soft


def postprocess(
    maps: ContrastMaps,
    *,
    clip_quantile: torch.Tensor,
    smoothing: torch.Tensor,
    threshold: torch.Tensor,
    union: torch.Tensor | None = None,
    union_threshold: torch.Tensor | None = None,
    closing: torch.Tensor | None = None,
    holes: torch.Tensor | None = None,
    dilation: torch.Tensor | None = None,
) -> MaskMaps:
    """Raw maps -> soft and binary masks, each row with its own (B,) parameters (None: the paper's
    recipe, no union / closing / hole filling / dilation). Pure: no model call."""
    soft = normalize_map(maps.difference, clip_quantile, smoothing)  # (B, h, w)
    binary = soft > threshold.to(soft.device).view(-1, 1, 1)  # (B, h, w)
    B = soft.shape[0]
    rows_soft, rows_binary = [], []
    for i in range(B):
        s, b = soft[i : i + 1], binary[i : i + 1]  # (1, h, w)
        if union is not None and bool(union[i]):
            rq = normalize_map(
                maps.relevance_query[i : i + 1], clip_quantile[i : i + 1], smoothing[i : i + 1]
            )
            rr = normalize_map(
                maps.relevance_reference[i : i + 1], clip_quantile[i : i + 1], smoothing[i : i + 1]
            )
            if b.any():  # an empty contrast mask (nothing to edit) stays empty
                b, added = union_cover(b, rq, rr, float(union_threshold[i]))
                s = torch.maximum(s, added)
        if closing is not None and int(closing[i]) > 0:
            b = close(b, int(closing[i]))
        if holes is not None and bool(holes[i]):
            b = fill_holes(b)
        if dilation is not None and int(dilation[i]) > 0:
            b = dilate(b, int(dilation[i]))
        rows_soft.append(s)
        rows_binary.append(b)
    return MaskMaps(difference=maps.difference, soft=torch.cat(rows_soft), binary=torch.cat(rows_binary))


def diffedit_mask(
    denoise: DenoiseFn,
    x0: torch.Tensor,
    noises: list[torch.Tensor],
    t: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    emb_query: torch.Tensor,
    emb_reference: torch.Tensor,
    *,
    clip_quantile: torch.Tensor,
    smoothing: torch.Tensor,
    threshold: torch.Tensor,
    max_batch: int,
    evals: torch.Tensor | None = None,
    emb_empty: torch.Tensor | None = None,
    union: torch.Tensor | None = None,
    union_threshold: torch.Tensor | None = None,
    closing: torch.Tensor | None = None,
    holes: torch.Tensor | None = None,
    dilation: torch.Tensor | None = None,
) -> MaskMaps:
    """Step 1 end to end: raw maps (``contrast_maps``), then ``postprocess``. Per-row parameters are
    (B,) tensors; ``union`` (B,) bool rows also get the relevance maps (``emb_empty`` required)."""
    raw = contrast_maps(
        denoise,
        x0,
        noises,
        t,
        alpha,
        sigma,
        emb_query,
        emb_reference,
        max_batch=max_batch,
        evals=evals,
        emb_empty=emb_empty,
        relevance=union,
    )
    return postprocess(
        raw,
        clip_quantile=clip_quantile,
        smoothing=smoothing,
        threshold=threshold,
        union=union,
        union_threshold=union_threshold,
        closing=closing,
        holes=holes,
        dilation=dilation,
    )

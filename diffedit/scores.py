"""Per-edit scores: what a dataset user filters and selects on (all "higher is better" except the mask's
component count). Each is computed from one edit and its own input alone: no batch-mate enters it.

1. Preservation, outside the edit mask, at the input's own size (images in 0..255, data range 255):

       score_psnr = 10 log10(255^2 / mean_{p not in M} |edit(p) - input(p)|^2)   dB, capped at PSNR_CAP
       score_ssim = mean_{p not in M} SSIM(edit, input)(p)                     in [-1, 1]

   SSIM is torchmetrics' (Wang et al. 2004: Gaussian window 11, sigma 1.5), whose per-pixel map is
   averaged over the pixels outside the mask M (the binary mask step 3 used, at the input's size);
   the window of a pixel next to M reaches 5 px into it, so an edit that keeps the background exactly
   scores a little below 1. Null when the mask covers the whole image.
2. The mask (the (h, w) latent mask step 3 used): ``score_mask_components`` = its 8-connected
   components (0 when empty), ``score_mask_largest`` = the share of its area in the largest one (in
   [0, 1]; 1 for a single blob, null when empty). ``mask_area`` is its own column.
3. Text alignment by the model itself — the "diffusion classifier" of Li et al. 2023 ("Your diffusion
   model is secretly a zero-shot classifier") and Clark & Jaini 2023: an image fits the text under which
   the model denoises it better. For a clean latent z, noise levels a_j (the schedule's timesteps at
   ``alignment_strengths``) and draws e_jk (the row's own, from its seed, the same for the input and
   every candidate of the row: a paired comparison), the per-pixel denoising error under a text T:

       z_jk      = sqrt(a_j) z + sqrt(1 - a_j) e_jk                                        (DDPM eq. 4)
       E_T(z)(p) = 1/(J K) sum_jk mean_c (e_jk - eps(z_jk, t_j, T))^2(p)

   and, over the edit mask M (the latent mask step 3 used), the relative contrast of the query Q over
   the caption R and the score, the contrast the edit y_0 gained over its input x_0:

       c(z)            = sum_{p in M} [E_R(z) - E_Q(z)](p) / sum_{p in M} [E_R(z) + E_Q(z)](p)   in [-1, 1]
       score_alignment = c(y_0) - c(x_0)                                                       in [-2, 2]

   > 0: where it edited, the edit fits Q rather than R by more than the input did (0 for an empty mask).
   Relative (scale-free) so one threshold serves rows whose errors differ in scale. Tuned on the shapes
   tuning stream (benchmarks/quality/selection.py): strengths 0.1 and 0.2, one draw; more draws did not
   raise its AUC (the limit is the signal, not the estimate's noise). Cost: 2 J K UNet evaluations per
   image (no guidance), the input once per row and every candidate once (4 + 4 per row at K = 1).

4. CLIP (``diffedit.clip``), when ``Scoring.clip_model`` names a transformers CLIP model on disk:
   ``score_clip_text``, ``score_clip_caption``, ``score_clip_direction``, ``score_clip_image``.

Every score can be switched off (``Scoring``); a switched-off score is null.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from diffedit.clip import CLIP_SCORE_NAMES
from diffedit.mask import reconstruct
from diffedit.modelcall import DenoiseFn, call_denoiser
from diffedit.schedule import add_noise

#: PSNR of an unchanged background is infinite; it is reported as this many dB.
PSNR_CAP = 100.0
#: Score names, as columns are named without the ``score_`` prefix (the CLIP ones: ``diffedit.clip``).
SCORE_NAMES = ("psnr", "ssim", "mask_components", "mask_largest", "alignment", *CLIP_SCORE_NAMES)


@dataclass(frozen=True)
class Scoring:
    """Which scores an editor computes, and the alignment score's noise levels and draws."""

    preservation: bool = True  # score_psnr, score_ssim
    mask: bool = True  # score_mask_components, score_mask_largest
    alignment: bool = True  # score_alignment (2 x strengths x draws UNet evaluations per image)
    alignment_strengths: tuple[float, ...] = (0.1, 0.2)  # noise strengths in (0, 1], as mask_strength
    alignment_draws: int = 1  # noise draws per strength
    clip_model: str | None = None  # a local directory or hf://org/name of a transformers CLIP model

    def __post_init__(self) -> None:
        problems = []
        if not self.alignment_strengths or not all(0.0 < s <= 1.0 for s in self.alignment_strengths):
            problems.append(
                f"alignment_strengths must list values in (0, 1], got {list(self.alignment_strengths)}"
            )
        if self.alignment_draws < 1:
            problems.append(f"alignment_draws must be >= 1, got {self.alignment_draws}")
        if problems:
            raise ValueError("invalid scoring: " + "; ".join(problems))

    @property
    def names(self) -> tuple[str, ...]:
        """The score names this scoring computes."""
        return (
            (("psnr", "ssim") if self.preservation else ())
            + (("mask_components", "mask_largest") if self.mask else ())
            + (("alignment",) if self.alignment else ())
            + (CLIP_SCORE_NAMES if self.clip_model else ())
        )

    @property
    def alignment_evals(self) -> int:
        """UNet evaluations of the alignment score for one image (input or candidate)."""
        return 2 * len(self.alignment_strengths) * self.alignment_draws if self.alignment else 0


# --------------------------------------------------------------------------- 1. preservation


def preservation(
    edited: Image.Image, original: Image.Image, mask: Image.Image, device: torch.device | str = "cpu"
) -> tuple[float | None, float | None]:
    """(PSNR dB, SSIM) of ``edited`` against ``original`` over the pixels outside ``mask`` (an "L"
    image, > 127 = edited), all three at the input's size; (None, None) when nothing is outside."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim_fn

    outside = torch.from_numpy(np.asarray(mask.convert("L")) <= 127).to(device)  # (H, W) bool
    n = int(outside.sum())
    if n == 0:
        return None, None

    def tensor(image: Image.Image) -> torch.Tensor:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3)
        return torch.from_numpy(rgb).permute(2, 0, 1)[None].to(device)  # (1, 3, H, W)

    a, b = tensor(edited), tensor(original)  # (1, 3, H, W) in 0..255
    mse = float(((a - b) ** 2).mean(dim=1)[0][outside].mean())  # over channels, then outside pixels
    psnr = PSNR_CAP if mse == 0 else min(PSNR_CAP, 10.0 * math.log10(255.0**2 / mse))
    if min(a.shape[-2:]) < 11:  # SSIM's window does not fit
        return psnr, None
    _, full = ssim_fn(a, b, data_range=255.0, return_full_image=True)  # full (1, 3, H, W)
    ssim = float(full[0].mean(dim=0)[outside].mean())
    return psnr, ssim


# --------------------------------------------------------------------------- 2. mask statistics


def mask_statistics(binary: torch.Tensor) -> tuple[int, float | None]:
    """(8-connected components, share of the area in the largest) of an (h, w) bool mask."""
    left = binary.clone()[None]  # (1, h, w)
    total = int(left.sum())
    sizes = []
    while left.any():
        seed = torch.zeros_like(left)
        first = int(torch.nonzero(left.flatten())[0])
        seed.view(-1)[first] = True
        component = reconstruct(seed, left)  # (1, h, w): the component holding ``first``
        sizes.append(int(component.sum()))
        left &= ~component
    return len(sizes), (max(sizes) / total if sizes else None)


# --------------------------------------------------------------------------- 3. text alignment


def alignment_errors(
    denoise: DenoiseFn,
    latents: torch.Tensor,
    noises: torch.Tensor,
    t: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    emb_query: torch.Tensor,
    emb_reference: torch.Tensor,
    *,
    max_batch: int,
    owners: torch.Tensor | None = None,
    evals: torch.Tensor | None = None,
) -> torch.Tensor:
    """E_Q(z) and E_R(z) of the module docstring for N clean latents.  # (N, 2, h, w): [E_Q, E_R]

    latents (N, C, h, w); noises (N, J K, C, h, w) each latent's draws; t, alpha, sigma (J K,) the
    draws' levels (draw i is at level i); emb_query, emb_reference (N, L, D).
    ``owners`` (N,) and ``evals`` count evaluations per owner, as in ``call_denoiser``. Every draw with Q,
    then every draw with R, in one flat batch of 2 N J K samples.
    """
    N, M = noises.shape[:2]
    z = latents.repeat_interleave(M, dim=0)  # (N M, C, h, w)
    e = noises.flatten(0, 1).to(latents.device, latents.dtype)  # (N M, C, h, w)
    ts = t.repeat(N).to(latents.device)  # (N M,)
    z_t = add_noise(
        z, e, alpha.repeat(N).to(latents.device), sigma.repeat(N).to(latents.device)
    )  # (N M, C, h, w)
    emb = torch.cat([emb_query.repeat_interleave(M, 0), emb_reference.repeat_interleave(M, 0)])  # (2NM, L, D)
    who = (torch.arange(N) if owners is None else owners.cpu()).repeat_interleave(M).repeat(2)  # (2 N M,)
    al, sg = alpha.repeat(2 * N).to(latents.device), sigma.repeat(2 * N).to(latents.device)  # (2 N M,)
    eps = call_denoiser(
        denoise,
        torch.cat([z_t, z_t]),
        torch.cat([ts, ts]),
        emb,
        al,
        sg,
        max_batch=max_batch,
        owners=who,
        evals=evals,
    ).eps.to(latents.dtype)  # (2 N M, C, h, w)
    err = ((eps - torch.cat([e, e])) ** 2).mean(dim=1).float()  # (2 N M, h, w): mean over channels
    err = err.view(2, N, M, *err.shape[1:]).mean(dim=2)  # (2, N, h, w): mean over levels and draws
    return err.transpose(0, 1)  # (N, 2, h, w)


def contrast(errors: torch.Tensor, binary: torch.Tensor) -> float:
    """c(z) of the module docstring from (2, h, w) errors [E_Q, E_R] over an (h, w) bool mask."""
    m = binary.to(errors.device)
    e_q, e_r = errors[0][m].sum(), errors[1][m].sum()
    total = float(e_q + e_r)
    return float(e_r - e_q) / total if total > 0 else 0.0


def alignment_score(errors_edit: torch.Tensor, errors_input: torch.Tensor, binary: torch.Tensor) -> float:
    """score_alignment = c(y_0) - c(x_0) over the (h, w) mask; 0 for an empty mask."""
    if not bool(binary.any()):
        return 0.0
    return contrast(errors_edit, binary) - contrast(errors_input, binary)

"""A model's per-sample conditioning packed into the one (B, L', D) tensor of the denoiser contract.

Every DiffEdit stage hands the model ``denoise(latents, t, cond, ...)``, with ``cond`` a
(B, L', D) tensor it only indexes, concatenates and compares along the batch. SD's conditioning is exactly
that (the text encoder's hidden states). SDXL's UNet takes three things per sample (Podell et al. 2023,
"SDXL", §2.2 and §2.3):

    encoder_hidden_states (L, D)  both text encoders' penultimate hidden states, concatenated on D
    text_embeds           (P,)    the second encoder's projected pooled output
    time_ids              (6,)    original size (h, w), crop top-left (top, left), target size (h, w)

They travel as one tensor, so that the stages stay model-agnostic and a sample's conditioning moves with
it through every gather and batch cut:

    cond (B, L + k, D):   cond[:, :L]  = encoder_hidden_states
                          cond[:, L:]  flattened to (B, k D) = [text_embeds (P) | time_ids (6) | zeros]
    k = ceil((P + 6) / D) extra token slots (1 for SDXL: P = 1280, D = 2048)

The time ids are written per row (``with_time_ids``), because they come from the row's image size, not
from its text. The flow models use the same packing with their own extras (``extra_dim``): SD3 packs
its pooled projection (CLIP-L + CLIP-G, P = 2048) and no extras; FLUX.1 its CLIP-L pooled output
(P = 768) and one extra, the distilled guidance value of FLUX.1-dev.
"""

from __future__ import annotations

import torch

__all__ = ["NUM_TIME_IDS", "extra_slots", "pack", "time_ids_for", "unpack", "with_time_ids"]

NUM_TIME_IDS = 6  # original (h, w), crop (top, left), target (h, w)


def extra_slots(pooled_dim: int, width: int, extra_dim: int = NUM_TIME_IDS) -> int:
    """k: the token slots that hold the pooled embedding and the extras, ceil((P + E) / D)."""
    return -(-(pooled_dim + extra_dim) // width)


def pack(
    hidden: torch.Tensor,
    pooled: torch.Tensor,
    extra: torch.Tensor | None = None,
    extra_dim: int = NUM_TIME_IDS,
) -> torch.Tensor:
    """hidden (B, L, D), pooled (B, P), extra (B, E) or None (zeros; SDXL: the time ids, E = 6)
    -> cond (B, L + k, D)."""
    B, _, D = hidden.shape
    P = pooled.shape[-1]
    k = extra_slots(P, D, extra_dim)
    slots = hidden.new_zeros(B, k * D)  # (B, k D)
    slots[:, :P] = pooled
    if extra is not None:
        slots[:, P : P + extra_dim] = extra
    return torch.cat([hidden, slots.view(B, k, D)], dim=1)  # (B, L + k, D)


def unpack(
    cond: torch.Tensor, pooled_dim: int, extra_dim: int = NUM_TIME_IDS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """cond (B, L + k, D) -> hidden (B, L, D), pooled (B, P), extra (B, E) (SDXL: the time ids)."""
    B, _, D = cond.shape
    k = extra_slots(pooled_dim, D, extra_dim)
    slots = cond[:, -k:].reshape(B, k * D)  # (B, k D)
    return cond[:, :-k], slots[:, :pooled_dim], slots[:, pooled_dim : pooled_dim + extra_dim]


def with_time_ids(cond: torch.Tensor, time_ids: torch.Tensor, pooled_dim: int) -> torch.Tensor:
    """cond (B, L + k, D) with each row's time ids (B, 6) written in (a new tensor)."""
    hidden, pooled, _ = unpack(cond, pooled_dim)
    return pack(hidden, pooled, time_ids.to(cond.dtype))


def time_ids_for(original_size: tuple[int, int], target_size: tuple[int, int]) -> list[int]:
    """SDXL's size conditions of one row as diffusers' ``_get_add_time_ids`` orders them:
    original (height, width), crop top-left (0, 0), target (height, width). Sizes given as (width, height)."""
    (ow, oh), (tw, th) = original_size, target_size
    return [oh, ow, 0, 0, th, tw]

"""The one model-call contract of every DiffEdit stage, and how samples are batched into it.

    EpsFn = Callable[[latents (B, C, h, w), t (B,) int64, text_embeddings (B, L, D)], eps (B, C, h, w)]

A fake model that honours this contract can stand in for the UNet in tests. Stages flatten all the
samples they need (rows x draws x prompts) and hand them to ``call_eps``, which cuts them into calls
of at most ``max_batch`` samples and counts every sample evaluated against the row that owns it.
Each sample's prediction depends on that sample alone, so how rows are cut into calls never
changes a result (to float tolerance).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def call_eps(
    eps_fn: EpsFn,
    latents: torch.Tensor,
    t: torch.Tensor,
    text_embeddings: torch.Tensor,
    *,
    max_batch: int,
    owners: torch.Tensor | None = None,
    evals: torch.Tensor | None = None,
) -> torch.Tensor:
    """eps for N samples, in calls of at most ``max_batch`` samples.

    latents (N, C, h, w), t (N,), text_embeddings (N, L, D) -> (N, C, h, w).
    ``owners`` (N,) gives the row each sample belongs to; ``evals`` (rows,) int64 is incremented by
    the number of samples actually evaluated for each row.
    """
    n = latents.shape[0]
    if not (t.shape[0] == text_embeddings.shape[0] == n):
        raise ValueError(
            f"call_eps: latents, t and text_embeddings must have the same batch size, got "
            f"{n}, {t.shape[0]}, {text_embeddings.shape[0]}"
        )
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    outputs = []
    for start in range(0, n, max_batch):
        stop = min(start + max_batch, n)
        outputs.append(eps_fn(latents[start:stop], t[start:stop], text_embeddings[start:stop]))
        if evals is not None and owners is not None:
            evals.index_add_(0, owners[start:stop].cpu(), torch.ones(stop - start, dtype=evals.dtype))
    return torch.cat(outputs, dim=0)

"""diffusers' deprecated ``StableDiffusionDiffEditPipeline``, kept only as a reference to compare
against (tests and benchmarks), and a hook that counts UNet sample-evaluations in any pipeline."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from diffedit.bundle import ModelBundle


def deprecated_diffedit_pipeline(bundle: ModelBundle) -> Any:
    """diffusers' deprecated DiffEdit pipeline over the bundle's own modules (no copy of the weights),
    with DDIM and DDIM-inverse schedulers from the bundle's scheduler config and its progress bars off."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice
        from diffusers import StableDiffusionDiffEditPipeline

        pipe = StableDiffusionDiffEditPipeline(
            vae=bundle.vae,
            text_encoder=bundle.text_encoder,
            tokenizer=bundle.tokenizer,
            unet=bundle.unet,
            scheduler=DDIMScheduler.from_config(bundle.scheduler_config),
            inverse_scheduler=DDIMInverseScheduler.from_config(bundle.scheduler_config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


class UNetSampleCounter:
    """Counts a UNet's sample-evaluations (the batch size of every forward call) through a forward
    hook, and keeps the last call's output. ``close()`` removes the hook."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.samples = 0
        self.last: torch.Tensor | None = None
        self._handle = unet.register_forward_hook(self._hook)

    def _hook(self, module: Any, args: Any, output: Any) -> None:
        self.samples += int(args[0].shape[0])
        self.last = output.sample.detach().clone() if hasattr(output, "sample") else None

    def close(self) -> None:
        self._handle.remove()

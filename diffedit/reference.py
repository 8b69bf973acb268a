"""diffusers' own pipelines over a bundle's modules, kept only as references to compare against (tests and
benchmarks): the deprecated ``StableDiffusionDiffEditPipeline`` (SD), ``StableDiffusionXLPipeline`` with a
DDIM scheduler (SDXL; diffusers has no SDXL DiffEdit), and a hook that counts UNet sample-evaluations in
any pipeline."""

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


def sdxl_ddim_pipeline(bundle: ModelBundle, *, final_alpha_one: bool = True) -> Any:
    """diffusers' ``StableDiffusionXLPipeline`` over an SDXL bundle's own modules, sampling with DDIM (eta 0)
    from the bundle's scheduler config, ``force_zeros_for_empty_prompt`` as the bundle has it, progress
    bars off.

    ``final_alpha_one``: the last DDIM step lands on the clean state (a = 1, ``set_alpha_to_one=True``), as
    DiffEdit's decode does (``diffedit.decode``); SD/SDXL configs ship ``set_alpha_to_one=False``, whose
    last step lands on a_0 = 1 - beta_0 instead.
    """
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    if bundle.family != "sdxl":
        raise ValueError(f"{bundle.source}: sdxl_ddim_pipeline needs an SDXL bundle, got {bundle.family}")
    scheduler = DDIMScheduler.from_config(bundle.scheduler_config, set_alpha_to_one=final_alpha_one)
    pipe = StableDiffusionXLPipeline(
        vae=bundle.vae,
        text_encoder=bundle.text_encoder,
        text_encoder_2=bundle.text_encoder_2,
        tokenizer=bundle.tokenizer,
        tokenizer_2=bundle.tokenizer_2,
        unet=bundle.unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=bundle.force_zeros_for_empty_prompt,
        add_watermarker=False,
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

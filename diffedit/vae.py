"""What every model bundle shares: the network's device and dtypes, and pixels <-> the scaled latents
every DiffEdit stage works on.

    z = (posterior mode - shift_factor) * scaling_factor           (encode)
    x = vae.decode(z / scaling_factor + shift_factor)              (decode)

SD 1.x/2.x and SDXL have no shift (0); SD3 and FLUX.1 do (their VAE config's ``shift_factor``), as
diffusers' pipelines apply it. DiffEdit's input is deterministic: the mode of the VAE posterior, not a
sample. A bundle that mixes this in provides ``vae`` and ``network`` (its UNet or transformer).
"""

from __future__ import annotations

from typing import Any

import torch


class LatentCodec:
    vae: Any  # diffusers.AutoencoderKL
    network: Any  # the denoising network (a property of the bundle)

    # device and dtype come from the network's first parameter: diffusers' ModelMixin.device/.dtype walk
    # every submodule (~1 ms each), and the denoiser reads them on every call.
    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.network.parameters()).dtype

    @property
    def work_dtype(self) -> torch.dtype:
        """The dtype of the stages' arithmetic: float32, or float64 for a float64 model (tests)."""
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    @property
    def vae_dtype(self) -> torch.dtype:
        """The VAE's own dtype (float32 for an upcast SDXL VAE, else the bundle's)."""
        return next(self.vae.parameters()).dtype

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel: 2 ** (number of VAE down blocks - 1); 8 for Stable Diffusion."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.inference_mode()
    def vae_encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1] -> scaled latents (B, C, H/f, W/f), the posterior mean."""
        posterior = self.vae.encode(images.to(self.device, self.vae_dtype)).latent_dist
        latents = posterior.mode()  # (B, C, H/f, W/f)
        return (latents.to(self.work_dtype) - self._shift()) * self._scale()

    @torch.inference_mode()
    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """scaled latents (B, C, h, w) -> images (B, 3, h*f, w*f) in [-1, 1]."""
        z = latents / self._scale() + self._shift()  # (B, C, h, w)
        images = self.vae.decode(z.to(self.device, self.vae_dtype)).sample  # (B, 3, H, W)
        return images.to(self.work_dtype).clamp(-1.0, 1.0)

    def _scale(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 1.0) or 1.0)

    def _shift(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

"""The model bundle: the resident components of a Stable-Diffusion-layout model.

A ``ModelBundle`` holds the UNet, the VAE, the text encoder and tokenizer and the noise schedule, on
one device and dtype, and turns them into the three pure-tensor callables that the DiffEdit stages
take: ``eps(latents, t, text_embeddings) -> eps``, ``vae_encode`` and ``vae_decode``. It owns no
algorithm. Loading from disk, fsspec URLs or the hub is ``diffedit.loading.load_bundle``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from diffedit.schedule import alphas_cumprod_from_config


@dataclass(eq=False)
class ModelBundle:
    unet: Any  # diffusers.UNet2DConditionModel
    vae: Any  # diffusers.AutoencoderKL
    text_encoder: Any  # transformers.CLIPTextModel (or any model returning last_hidden_state)
    tokenizer: Any  # transformers.CLIPTokenizer
    scheduler_config: dict[str, Any]  # the scheduler's config.json: beta schedule, prediction type, ...
    source: str = "<in-process>"  # where it was loaded from, as the user named it (no credentials)
    weights_hash: str = ""  # sha256 over the safetensors weight files ("" when built in-process)
    alphas_cumprod: torch.Tensor = field(init=False)  # (T,) float64, on the CPU

    def __post_init__(self) -> None:
        self.alphas_cumprod = alphas_cumprod_from_config(self.scheduler_config)
        self._alphas_device: torch.Tensor | None = None
        prediction = self.scheduler_config.get("prediction_type", "epsilon")
        if prediction not in ("epsilon", "v_prediction"):
            raise ValueError(
                f"{self.source}: scheduler prediction_type {prediction!r} is not supported "
                "(expected 'epsilon' or 'v_prediction')"
            )
        self.prediction_type = prediction
        for module in (self.unet, self.vae, self.text_encoder):
            module.eval()
            module.requires_grad_(False)

    def optimize(
        self, *, channels_last: bool = False, compile_unet: bool = False, vae_tiling: bool = False
    ) -> ModelBundle:
        """Speed options for accelerators; all off by default, results equal to float tolerance.

        channels_last: NHWC memory format for the UNet's and VAE's convolutions (the fast cuDNN
        kernels for float16/bfloat16 on tensor cores; on a CPU with oneDNN it is faster in float32 too).
        compile_unet: ``torch.compile`` the UNet through ``diffedit.compiled.CompiledUNet`` (dynamic in
        the batch dimension: a one-off compile per latent size, repaid over a long job). vae_tiling: decode and encode large
        images in tiles (bounded memory; diffusers' ``enable_tiling``). Attention already runs on
        PyTorch's scaled_dot_product_attention (diffusers' default processor).
        """
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
        if vae_tiling:
            self.vae.enable_tiling()
        if compile_unet:
            from diffedit.compiled import CompiledUNet

            self.unet = CompiledUNet(self.unet)  # dynamic batch: no recompile per batch composition
        return self

    # ----------------------------------------------------------------- geometry
    # device and dtype come from the UNet's first parameter: diffusers' ModelMixin.device/.dtype walk
    # every submodule (~1 ms each), and eps() reads them on every call.
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def work_dtype(self) -> torch.dtype:
        """The dtype of the stages' arithmetic: float32, or float64 for a float64 model (tests)."""
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel: 2 ** (number of VAE down blocks - 1); 8 for Stable Diffusion."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_multiple(self) -> int:
        """Latent sides must be multiples of this for the UNet's down/up path to line up."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def pixel_multiple(self) -> int:
        """Image sides must be multiples of this: 64 for Stable Diffusion."""
        return self.vae_scale_factor * self.latent_multiple

    @property
    def native_size(self) -> int:
        """The image side the UNet was trained at: sample_size x VAE stride (512 for SD 1.5)."""
        sample = self.unet.config.sample_size
        sample = sample[0] if isinstance(sample, (list, tuple)) else sample
        return int(sample) * self.vae_scale_factor

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    # ----------------------------------------------------------------- text
    @torch.inference_mode()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings, padded to the tokenizer's max length.  # (P, L, D)"""
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        ids = tokens.input_ids.to(self.text_encoder.device)  # (P, L)
        hidden = self.text_encoder(ids)[0]  # (P, L, D)
        return hidden.to(self.dtype)

    # ----------------------------------------------------------------- model calls
    @torch.inference_mode()
    def eps(self, latents: torch.Tensor, t: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """The noise-prediction contract of every DiffEdit stage.

        latents (B, C, h, w), t (B,) integer timesteps, text_embeddings (B, L, D) -> eps (B, C, h, w).
        A v-prediction model's output is converted: eps = sqrt(a_t) v + sqrt(1 - a_t) x_t
        (Salimans & Ho 2022, "Progressive distillation", eq. for v).
        """
        out = self.unet(
            latents.to(self.dtype), t.to(self.device), encoder_hidden_states=text_embeddings.to(self.dtype)
        ).sample  # (B, C, h, w)
        if self.prediction_type == "v_prediction":
            a = self._alphas_on_device()[t.to(self.device)].to(out.dtype).view(-1, 1, 1, 1)
            out = a.sqrt() * out + (1 - a).sqrt() * latents.to(out.dtype)
        return out.to(self.work_dtype)

    @torch.inference_mode()
    def vae_encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1] -> scaled latents (B, C, H/f, W/f), the posterior mean.

        DiffEdit's input is deterministic: the mode of the VAE posterior, not a sample.
        """
        posterior = self.vae.encode(images.to(self.device, self.dtype)).latent_dist
        latents = posterior.mode()
        return (latents.to(self.work_dtype) - self._shift()) * self._scale()

    @torch.inference_mode()
    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """scaled latents (B, C, h, w) -> images (B, 3, h*f, w*f) in [-1, 1]."""
        z = latents / self._scale() + self._shift()
        images = self.vae.decode(z.to(self.device, self.dtype)).sample
        return images.to(self.work_dtype).clamp(-1.0, 1.0)

    def _alphas_on_device(self) -> torch.Tensor:
        if self._alphas_device is None or self._alphas_device.device != self.device:
            self._alphas_device = self.alphas_cumprod.to(self.device)
        return self._alphas_device

    def _scale(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 1.0) or 1.0)

    def _shift(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

"""The model bundle of a rectified-flow transformer: Stable Diffusion 3 / 3.5 or FLUX.1.

A ``FlowBundle`` has the surface of ``diffedit.bundle.ModelBundle`` (``denoise``, ``levels``,
``encode_prompts``, ``condition_rows``, ``vae_encode``/``vae_decode``, the geometry), so ``DiffEditor``
and every stage run on it unchanged. What differs, each as diffusers' pipeline does it:

* **Family "sd3"** (``StableDiffusion3Pipeline``, ``SD3Transformer2DModel``). Text: CLIP-L and CLIP-G,
  each's penultimate hidden states concatenated on D and zero-padded to the joint width, followed on the
  sequence by T5's last hidden states (``max_sequence_length`` tokens; zeros when the optional T5 is
  absent); the pooled projection is both CLIP models' projected pooled outputs concatenated. Time input
  t = s * 1000; sigmas from ``FlowMatchEulerDiscreteScheduler`` with the config's static ``shift``.
* **Family "flux"** (``FluxPipeline``, ``FluxTransformer2DModel``). Text: T5's last hidden states
  (512 tokens for dev, 256 for schnell) and CLIP-L's pooled output (77 tokens). Latents (B, C, h, w)
  travel to the transformer as 2x2 patches, (B, h/2 w/2, 4C) tokens with their (0, row, column) image
  ids (``pack_latents``), and back: the stages, and so the mask, work on the unpacked latent grid (an 8-px
  cell), while the transformer resolves 2x2 cells (16 px). Time input t / 1000 = s. FLUX.1-dev's
  guidance is a distilled embedding (``guidance``, 3.5 by default, packed in the conditioning), not CFG:
  the job's ``guidance_scale`` 1 costs one evaluation per step; above 1 it is true CFG with the negative
  prompt. Sigmas: ``linspace(1, 1/S, S)`` shifted by mu, which depends on the image's token count
  (``calculate_shift``), so every size bucket has its own grid, the same for inversion and decoding
  (``levels(steps, latent_hw)``).

The network predicts the velocity v ~ eps - x_0 at x_s = (1 - s) x_0 + s eps; ``modelcall.from_velocity``
turns it into the contract's (x0-hat, eps-hat) at the latent's level.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from diffedit import conditioning
from diffedit.loading.layout import FLUX_SAMPLE_SIZE
from diffedit.modelcall import Prediction, from_velocity
from diffedit.schedule import Levels, flow_levels
from diffedit.tokens import is_truncated
from diffedit.vae import LatentCodec

log = logging.getLogger(__name__)

FLOW_FAMILIES = ("sd3", "flux")


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """FLUX's 2x2 patch tokens (``FluxPipeline._pack_latents``): (B, C, h, w) -> (B, h/2 w/2, 4C)."""
    B, C, h, w = latents.shape
    x = latents.view(B, C, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)  # (B, h/2, w/2, C, 2, 2)
    return x.reshape(B, (h // 2) * (w // 2), C * 4)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of ``pack_latents`` (``FluxPipeline._unpack_latents``): (B, h/2 w/2, 4C) -> (B, C, h, w)."""
    B, _, D = tokens.shape
    x = tokens.view(B, h // 2, w // 2, D // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)  # (B, C, h/2, 2, w/2, 2)
    return x.reshape(B, D // 4, h, w)


def image_ids(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """FLUX's image position ids of the packed tokens: (h/2 w/2, 3) rows of (0, row, column)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)  # (h/2 w/2, 3)


def calculate_shift(image_seq_len: int, config: dict[str, Any]) -> float:
    """FLUX's mu for an image of ``image_seq_len`` tokens: linear from base_shift at base_image_seq_len
    to max_shift at max_image_seq_len (``diffusers.pipelines.flux.pipeline_flux.calculate_shift``)."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base, top = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    m = (top - base) / (max_len - base_len)
    return image_seq_len * m + (base - m * base_len)


@dataclass(eq=False)
class FlowBundle(LatentCodec):
    transformer: Any  # diffusers.SD3Transformer2DModel or FluxTransformer2DModel
    vae: Any  # diffusers.AutoencoderKL (16 latent channels, with a shift_factor)
    text_encoder: Any  # CLIP-L: CLIPTextModelWithProjection (sd3) or CLIPTextModel (flux)
    tokenizer: Any  # CLIPTokenizer
    text_encoder_2: Any  # CLIP-G: CLIPTextModelWithProjection (sd3); T5EncoderModel (flux)
    tokenizer_2: Any  # CLIPTokenizer (sd3); T5TokenizerFast (flux)
    scheduler_config: dict[str, Any]  # FlowMatchEulerDiscreteScheduler's config
    text_encoder_3: Any = None  # sd3: T5EncoderModel, optional
    tokenizer_3: Any = None  # sd3: T5TokenizerFast, optional
    source: str = "<in-process>"
    weights_hash: str = ""
    max_sequence_length: int | None = None  # T5 tokens: 256 (sd3, flux schnell), 512 (flux dev) by default
    guidance: float = 3.5  # FLUX.1-dev's distilled guidance embedding (unused without guidance_embeds)
    sample_size: int | None = None  # native latent side (None: the transformer's, or FLUX's 128)

    def __post_init__(self) -> None:
        name = type(self.transformer).__name__
        if name.startswith("SD3Transformer"):
            self.family = "sd3"
        elif name.startswith("FluxTransformer"):
            self.family = "flux"
        else:
            raise ValueError(f"{self.source}: {name} is not a flow transformer DiffEdit drives (SD3, FLUX.1)")
        self.prediction_type = "flow"
        if self.max_sequence_length is None:
            dev = self.family == "flux" and bool(self.transformer.config.get("guidance_embeds"))
            self.max_sequence_length = 512 if dev else 256
        self._check_family()
        for module in self._modules():
            module.eval()
            module.requires_grad_(False)

    def _modules(self) -> list[Any]:
        parts = (self.transformer, self.vae, self.text_encoder, self.text_encoder_2, self.text_encoder_3)
        return [m for m in parts if m is not None]

    def _check_family(self) -> None:
        """Refuse components that do not fit together, naming the mismatch."""
        c = self.transformer.config
        problems = []
        latent = int(self.vae.config.latent_channels)
        packed = 4 if self.family == "flux" else 1
        if c.in_channels != latent * packed:
            problems.append(
                f"transformer in_channels {c.in_channels} != {packed} x VAE latent_channels {latent}"
            )
        if self.family == "sd3":
            pooled = self.text_encoder.config.projection_dim + self.text_encoder_2.config.projection_dim
            if c.pooled_projection_dim != pooled:
                problems.append(
                    f"transformer pooled_projection_dim {c.pooled_projection_dim} != CLIP projections {pooled}"
                )
            clip = self.text_encoder.config.hidden_size + self.text_encoder_2.config.hidden_size
            if clip > c.joint_attention_dim:
                problems.append(
                    f"CLIP hidden sizes {clip} exceed the joint_attention_dim {c.joint_attention_dim}"
                )
            if (
                self.text_encoder_3 is not None
                and self.text_encoder_3.config.d_model != c.joint_attention_dim
            ):
                problems.append(
                    f"T5 d_model {self.text_encoder_3.config.d_model} != joint_attention_dim {c.joint_attention_dim}"
                )
        else:
            if c.pooled_projection_dim != self.text_encoder.config.hidden_size:
                problems.append(
                    f"transformer pooled_projection_dim {c.pooled_projection_dim} != CLIP hidden size "
                    f"{self.text_encoder.config.hidden_size}"
                )
            if self.text_encoder_2.config.d_model != c.joint_attention_dim:
                problems.append(
                    f"T5 d_model {self.text_encoder_2.config.d_model} != joint_attention_dim {c.joint_attention_dim}"
                )
        if problems:
            raise ValueError(f"{self.source}: {self.family} components do not fit: " + "; ".join(problems))

    def optimize(
        self,
        *,
        channels_last: bool = False,
        compile_unet: bool = False,
        vae_tiling: bool = False,
        max_batch: int | None = None,
    ) -> FlowBundle:
        """Speed options (``ModelBundle.optimize``): channels_last for the VAE (the transformer has no
        convolutions to speak of), VAE tiling, and ``torch.compile`` of the transformer's repeated blocks
        (diffusers' regional compilation: one block compiled once for all its repeats, so a cold actor
        compiles in seconds) when asked; ``max_batch`` is accepted for ``ModelBundle``'s surface."""
        if channels_last:
            self.vae.to(memory_format=torch.channels_last)
        if vae_tiling:
            self.vae.enable_tiling()
        if compile_unet:
            self.transformer.compile_repeated_blocks(dynamic=True)
        return self

    # ----------------------------------------------------------------- geometry
    @property
    def network(self) -> Any:
        """The denoising network (``LatentCodec`` reads device and dtype from it)."""
        return self.transformer

    @property
    def latent_multiple(self) -> int:
        """Latent sides must be multiples of the transformer's patch (2: SD3's patch_size, FLUX's packing)."""
        return 2 if self.family == "flux" else int(self.transformer.config.patch_size)

    @property
    def pixel_multiple(self) -> int:
        return self.vae_scale_factor * self.latent_multiple

    @property
    def native_size(self) -> int:
        """The image side the transformer was trained at (1024 px for SD3.5 and FLUX.1)."""
        if self.sample_size is not None:
            return int(self.sample_size) * self.vae_scale_factor
        if self.family == "flux":
            return FLUX_SAMPLE_SIZE * self.vae_scale_factor
        return int(self.transformer.config.sample_size) * self.vae_scale_factor

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    # ----------------------------------------------------------------- text
    @property
    def pooled_dim(self) -> int:
        return int(self.transformer.config.pooled_projection_dim)

    @property
    def extra_dim(self) -> int:
        """Extras packed after the pooled embedding: FLUX-dev's guidance value (1), else none."""
        return 1 if self.family == "flux" and self.transformer.config.get("guidance_embeds") else 0

    @torch.inference_mode()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text conditioning of each prompt, as the family's pipeline ``encode_prompt`` builds it (module
        docstring), packed with the pooled embedding (and FLUX-dev's guidance) by ``conditioning.pack``.
        # (P, L + k, D)"""
        if self.family == "sd3":
            hidden_l, pooled_l = self._clip(
                self.tokenizer, self.text_encoder, prompts
            )  # (P, 77, D_l), (P, P_l)
            hidden_g, pooled_g = self._clip(
                self.tokenizer_2, self.text_encoder_2, prompts
            )  # (P, 77, D_g), (P, P_g)
            t5 = self._t5(self.tokenizer_3, self.text_encoder_3, prompts)  # (P, T, J)
            clip = torch.cat([hidden_l, hidden_g], dim=-1).to(self.text_encoder.dtype)  # (P, 77, D_l + D_g)
            clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))  # (P, 77, J)
            hidden = torch.cat([clip.to(t5.dtype), t5], dim=-2)  # (P, 77 + T, J)
            pooled = torch.cat([pooled_l, pooled_g], dim=-1)  # (P, P_l + P_g)
            extra = None
        else:
            ids = self._token_ids(self.tokenizer, prompts, self.text_encoder, what="CLIP")
            pooled = self.text_encoder(ids, output_hidden_states=False).pooler_output  # (P, 768)
            hidden = self._t5(self.tokenizer_2, self.text_encoder_2, prompts)  # (P, T, J)
            extra = torch.full((len(prompts), 1), self.guidance) if self.extra_dim else None  # (P, 1)
        cond = conditioning.pack(hidden, pooled.to(hidden.dtype), extra, extra_dim=self.extra_dim)
        return cond.to(self.dtype)  # (P, L + k, D)

    def _clip(self, tokenizer: Any, encoder: Any, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """SD3's CLIP branch: penultimate hidden states and the projected pooled output (clip_skip None)."""
        out = encoder(self._token_ids(tokenizer, prompts, encoder, what="CLIP"), output_hidden_states=True)
        return out.hidden_states[-2], out[0]  # (P, L, D), (P, P_i)

    def _t5(self, tokenizer: Any, encoder: Any, prompts: list[str]) -> torch.Tensor:
        """T5's last hidden states at ``max_sequence_length`` tokens; zeros when there is no T5 (SD3
        without text_encoder_3, as diffusers).  # (P, T, J)"""
        T = int(self.max_sequence_length)
        if encoder is None:
            J = int(self.transformer.config.joint_attention_dim)
            return torch.zeros(len(prompts), T, J, device=self.device, dtype=self.text_encoder.dtype)
        ids = self._token_ids(tokenizer, prompts, encoder, what="T5", max_length=T)
        return encoder(ids)[0].to(next(encoder.parameters()).dtype)  # (P, T, J)

    @staticmethod
    def _token_ids(
        tokenizer: Any, prompts: list[str], encoder: Any, *, what: str, max_length: int | None = None
    ) -> torch.Tensor:
        """Token ids padded to ``max_length`` (the tokenizer's own by default), with a warning naming the
        encoder for every prompt it cuts (CLIP at 77, T5 at 256/512).  # (P, L)"""
        length = max_length or tokenizer.model_max_length
        tokens = tokenizer(
            prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        )
        for prompt in prompts:
            if is_truncated(tokenizer, prompt, length):
                log.warning("%s truncates this prompt at %d tokens: %r", what, length, prompt)
        return tokens.input_ids.to(next(encoder.parameters()).device)  # (P, L)

    def condition_rows(
        self,
        embeddings: torch.Tensor,
        original_sizes: list[tuple[int, int]],
        target_sizes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """Flow models take no per-row size conditions: the embeddings as they are.  # (B, L', D)"""
        return embeddings

    # ----------------------------------------------------------------- model calls
    def levels(self, num_steps: int, latent_hw: tuple[int, int] | None = None) -> Levels:
        """The flow grid of ``num_steps`` steps at a latent size: SD3's static shift; FLUX's
        ``linspace(1, 1/S, S)`` with the size's mu (``calculate_shift``), as FluxPipeline.  # (S + 1,) each"""
        if self.family == "sd3":
            return flow_levels(self.scheduler_config, num_steps)
        if latent_hw is None:
            raise ValueError("FLUX's noise levels depend on the latent size: pass latent_hw")
        h, w = latent_hw
        sigmas = torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64).tolist()
        mu = None
        if self.scheduler_config.get("use_dynamic_shifting"):
            mu = calculate_shift((h // 2) * (w // 2), self.scheduler_config)
        return flow_levels(self.scheduler_config, num_steps, mu=mu, sigmas=sigmas)

    @torch.inference_mode()
    def velocity(self, latents: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The transformer's velocity prediction.

        latents (B, C, h, w), t (B,) the flow time s * 1000, cond (B, L', D) -> v (B, C, h, w).
        """
        cond = cond.to(self.device, self.dtype)
        hidden, pooled, extra = conditioning.unpack(cond, self.pooled_dim, self.extra_dim)
        x = latents.to(self.device, self.dtype)  # (B, C, h, w)
        t = t.to(self.device)
        if self.family == "sd3":
            out = self.transformer(
                hidden_states=x, timestep=t, encoder_hidden_states=hidden, pooled_projections=pooled
            ).sample  # (B, C, h, w)
            return out.to(self.work_dtype)
        h, w = x.shape[-2:]
        guidance = extra[:, 0].float() if self.extra_dim else None  # (B,)
        out = self.transformer(
            hidden_states=pack_latents(x),  # (B, h/2 w/2, 4C)
            timestep=t.to(self.dtype) / 1000,
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=hidden,
            txt_ids=torch.zeros(hidden.shape[1], 3, device=self.device, dtype=self.dtype),
            img_ids=image_ids(h, w, self.device, self.dtype),
        ).sample  # (B, h/2 w/2, 4C)
        return unpack_latents(out, h, w).to(self.work_dtype)  # (B, C, h, w)

    def denoise(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        alpha: torch.Tensor,
        sigma: torch.Tensor,
    ) -> Prediction:
        """The denoiser contract (``diffedit.modelcall``): the velocity at t, read at the latents' level
        s = sigma: x0 = x - s v, eps = x + (1 - s) v. Prediction of (B, C, h, w) each."""
        v = self.velocity(latents, t, cond).to(latents.dtype)
        return from_velocity(latents, v, sigma)

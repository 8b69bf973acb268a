"""The model bundle: the resident components of a Stable Diffusion (1.x/2.x) or SDXL model.

A ``ModelBundle`` holds the UNet, the VAE, the text encoder(s) and tokenizer(s) and the noise schedule,
on one device and dtype, and turns them into the pure-tensor callables that the DiffEdit stages take:
``denoise(latents, t, cond) -> Prediction(x0, eps)`` (``diffedit.modelcall``'s contract, from the UNet's
noise or v prediction), ``levels(steps, latent_hw)`` (the DDIM grid, ``diffedit.schedule``),
``vae_encode`` and ``vae_decode``. It owns no algorithm. Flow-matching models (SD3, FLUX.1) are
``diffedit.flow_bundle.FlowBundle``, with the same surface.

Loading from disk, fsspec URLs or the hub is ``diffedit.loading.load_bundle``.

A UNet trained with the rectified-flow objective (the scheduler config names
``FlowMatchEulerDiscreteScheduler``, as ``diffedit.shapes.train --objective flow`` exports) is the same
bundle with ``prediction_type == "flow"``: its grid is the scheduler's flow grid (``schedule.flow_levels``,
time input 1000 s) and its output a velocity (``modelcall.from_velocity``), as on SD3; the stages do not
change.

SDXL (family "sdxl", a UNet with ``addition_embed_type="text_time"``) differs in three places, each as
diffusers' ``StableDiffusionXLPipeline`` does it:
  1. text: both encoders' penultimate hidden states, concatenated, and the second encoder's projected
     pooled output; the empty prompt (the unconditional) embeds as zeros when the model says
     ``force_zeros_for_empty_prompt``. The three added conditions travel in one tensor
     (``diffedit.conditioning``); ``condition_rows`` writes each row's size conditions into it;
  2. the UNet call: ``added_cond_kwargs = {"text_embeds", "time_ids"}`` unpacked from that tensor;
  3. the VAE stays in float32 when the bundle is float16 and its config says ``force_upcast`` (the SDXL
     VAE overflows in float16). SD pipelines ignore ``force_upcast``, and so does an SD bundle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from diffedit import conditioning
from diffedit.loading.layout import FLOW_SCHEDULER_CLASS
from diffedit.modelcall import Prediction, from_velocity, vp_denoiser
from diffedit.schedule import Levels, alphas_cumprod_from_config, ddim_levels, flow_levels
from diffedit.vae import LatentCodec


@dataclass(eq=False)
class ModelBundle(LatentCodec):
    unet: Any  # diffusers.UNet2DConditionModel
    vae: Any  # diffusers.AutoencoderKL
    text_encoder: Any  # transformers.CLIPTextModel (or any model returning last_hidden_state)
    tokenizer: Any  # transformers.CLIPTokenizer
    scheduler_config: dict[str, Any]  # the scheduler's config.json: beta schedule, prediction type, ...
    source: str = "<in-process>"  # where it was loaded from, as the user named it (no credentials)
    weights_hash: str = ""  # sha256 over the safetensors weight files ("" when built in-process)
    text_encoder_2: Any = None  # SDXL: transformers.CLIPTextModelWithProjection; None for SD
    tokenizer_2: Any = None  # SDXL: transformers.CLIPTokenizer; None for SD
    force_zeros_for_empty_prompt: bool = (
        False  # SDXL: "" embeds as zeros (model_index.json; diffusers' default)
    )
    alphas_cumprod: torch.Tensor = field(init=False)  # (T,) float64, on the CPU; empty for a flow UNet

    def __post_init__(self) -> None:
        self._alphas_device: torch.Tensor | None = None
        if self.scheduler_config.get("_class_name") == FLOW_SCHEDULER_CLASS:  # a rectified-flow UNet
            self.prediction_type = "flow"
            self.alphas_cumprod = torch.empty(0, dtype=torch.float64)  # no VP schedule
        else:
            prediction = self.scheduler_config.get("prediction_type", "epsilon")
            if prediction not in ("epsilon", "v_prediction"):
                raise ValueError(
                    f"{self.source}: scheduler prediction_type {prediction!r} is not supported "
                    "(expected 'epsilon' or 'v_prediction')"
                )
            self.prediction_type = prediction
            self.alphas_cumprod = alphas_cumprod_from_config(self.scheduler_config)
        self._denoise = vp_denoiser(self.eps)
        self.family = "sdxl" if self.unet.config.get("addition_embed_type") == "text_time" else "sd"
        self._check_family()
        for module in self._modules():
            module.eval()
            module.requires_grad_(False)
        if self.family == "sdxl" and self.dtype == torch.float16 and self.vae.config.get("force_upcast"):
            self.vae.to(torch.float32)  # diffusers' SDXL pipelines upcast it too: float16 overflows

    def _modules(self) -> list[Any]:
        return [m for m in (self.unet, self.vae, self.text_encoder, self.text_encoder_2) if m is not None]

    def _check_family(self) -> None:
        """Refuse components that do not fit together, naming the mismatch."""
        added = self.unet.config.get("addition_embed_type")
        if self.family == "sd":
            if added is not None:
                raise ValueError(f"{self.source}: UNet addition_embed_type {added!r} is not supported")
            if self.text_encoder_2 is not None or self.tokenizer_2 is not None:
                raise ValueError(f"{self.source}: a second text encoder needs an SDXL UNet (text_time)")
            return
        if self.text_encoder_2 is None or self.tokenizer_2 is None:
            raise ValueError(f"{self.source}: an SDXL UNet (text_time) needs text_encoder_2 and tokenizer_2")
        u, c1, c2 = self.unet.config, self.text_encoder.config, self.text_encoder_2.config
        problems = []
        if u.cross_attention_dim != c1.hidden_size + c2.hidden_size:
            problems.append(
                f"unet cross_attention_dim {u.cross_attention_dim} != text encoders' hidden sizes "
                f"{c1.hidden_size} + {c2.hidden_size}"
            )
        added_dim = c2.projection_dim + conditioning.NUM_TIME_IDS * u.addition_time_embed_dim
        if u.projection_class_embeddings_input_dim != added_dim:
            problems.append(
                f"unet projection_class_embeddings_input_dim {u.projection_class_embeddings_input_dim} != "
                f"text_encoder_2 projection_dim {c2.projection_dim} + 6 x addition_time_embed_dim "
                f"{u.addition_time_embed_dim}"
            )
        if self.tokenizer.model_max_length != self.tokenizer_2.model_max_length:
            problems.append(
                f"tokenizer model_max_length {self.tokenizer.model_max_length} != tokenizer_2's "
                f"{self.tokenizer_2.model_max_length}"
            )
        if problems:
            raise ValueError(f"{self.source}: SDXL components do not fit: " + "; ".join(problems))

    def optimize(
        self,
        *,
        channels_last: bool = False,
        compile_unet: bool = False,
        vae_tiling: bool = False,
        max_batch: int | None = None,
    ) -> ModelBundle:
        """Speed options for accelerators; all off by default, results equal to float tolerance.

        channels_last: NHWC memory format for the UNet's and VAE's convolutions (the fast cuDNN
        kernels for float16/bfloat16 on tensor cores; on a CPU with oneDNN it is faster in float32 too).
        compile_unet: ``torch.compile`` the UNet through ``diffedit.compiled.CompiledUNet``: on CUDA with
        ``max_batch`` (the batch job), static shapes with batches padded to ``padded_sizes(max_batch)``,
        CUDA graphs, ``cudnn.benchmark`` and fused QKV; elsewhere dynamic in the batch dimension (a
        one-off compile per latent size, repaid over a long job). vae_tiling: decode and encode large
        images in tiles (bounded memory; diffusers' ``enable_tiling``). Attention already runs on
        PyTorch's scaled_dot_product_attention (diffusers' default processor).
        """
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
        if vae_tiling:
            self.vae.enable_tiling()
        if compile_unet:
            from diffedit.compiled import CompiledUNet, padded_sizes

            if self.device.type == "cuda" and max_batch:
                # The batch-job path: static shapes, batches padded to a few sizes, CUDA graphs, the fastest
                # cuDNN kernels per shape, fused QKV projections (diffusers' fuse_qkv_projections).
                torch.backends.cudnn.benchmark = True
                if hasattr(self.unet, "fuse_qkv_projections"):
                    self.unet.fuse_qkv_projections()
                self.unet = CompiledUNet(
                    self.unet, mode="reduce-overhead", static_batches=padded_sizes(max_batch)
                )
            else:
                self.unet = CompiledUNet(self.unet)  # dynamic batch: no recompile per batch composition
        return self

    # ----------------------------------------------------------------- geometry
    @property
    def network(self) -> Any:
        """The denoising network (``LatentCodec`` reads device and dtype from it)."""
        return self.unet

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
        return int(self.scheduler_config.get("num_train_timesteps", 1000))

    # ----------------------------------------------------------------- text
    @torch.inference_mode()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings, padded to the tokenizer's max length, in the model's dtype.

        SD: the text encoder's last hidden states.  # (P, L, D)
        SDXL, as diffusers' ``StableDiffusionXLPipeline.encode_prompt`` (clip_skip None): each encoder's
        penultimate hidden states, concatenated on D, and text_encoder_2's projected pooled output, packed
        with zero size conditions (``diffedit.conditioning.pack``); the empty prompt gives zeros when
        ``force_zeros_for_empty_prompt``.  # (P, L + k, D)
        """
        if self.family == "sd":
            return self.text_encoder(self._token_ids(self.tokenizer, prompts, self.text_encoder))[0].to(
                self.dtype
            )
        hidden, pooled = [], None
        for tokenizer, encoder in (
            (self.tokenizer, self.text_encoder),
            (self.tokenizer_2, self.text_encoder_2),
        ):
            out = encoder(self._token_ids(tokenizer, prompts, encoder), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])  # (P, L, D_i): the penultimate layer
            pooled = out[0] if out[0].ndim == 2 else pooled  # (P, P_2): text_embeds of the projection model
        cond = conditioning.pack(torch.cat(hidden, dim=-1), pooled).to(self.dtype)  # (P, L + k, D)
        if self.force_zeros_for_empty_prompt:
            empty = torch.tensor([p == "" for p in prompts], device=cond.device)
            cond[empty] = 0
        return cond

    @staticmethod
    def _token_ids(tokenizer: Any, prompts: list[str], encoder: Any) -> torch.Tensor:
        tokens = tokenizer(
            prompts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return tokens.input_ids.to(next(encoder.parameters()).device)  # (P, L)

    def condition_rows(
        self,
        embeddings: torch.Tensor,
        original_sizes: list[tuple[int, int]],
        target_sizes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """Per-row conditioning from per-prompt embeddings (B, L', D): SDXL writes each row's size
        conditions (``conditioning.time_ids_for``: the row's input size as original size, crop (0, 0), the
        size the model works at as target size; sizes as (width, height)), in the embeddings' dtype as
        diffusers does; SD embeddings come back as they are."""
        if self.family == "sd":
            return embeddings
        ids = [conditioning.time_ids_for(o, t) for o, t in zip(original_sizes, target_sizes, strict=True)]
        time_ids = torch.tensor(ids, dtype=embeddings.dtype, device=embeddings.device)  # (B, 6)
        return conditioning.with_time_ids(embeddings, time_ids, self._pooled_dim())

    def _pooled_dim(self) -> int:
        return int(self.text_encoder_2.config.projection_dim)

    # ----------------------------------------------------------------- model calls
    def levels(self, num_steps: int, latent_hw: tuple[int, int] | None = None) -> Levels:
        """The DDIM grid of ``num_steps`` steps (the same at every latent size); a flow UNet's flow grid
        with the scheduler's shift.  # (S + 1,) each"""
        if self.prediction_type == "flow":
            return flow_levels(self.scheduler_config, num_steps)
        return ddim_levels(self.scheduler_config, num_steps)

    def denoise(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        alpha: torch.Tensor,
        sigma: torch.Tensor,
    ) -> Prediction:
        """The denoiser contract of every DiffEdit stage (``diffedit.modelcall``): the UNet's noise
        prediction at t (``eps``) and the clean latent it implies at the latents' level (alpha, sigma),
        x0 = (x - sigma eps) / alpha; a flow UNet's velocity read at s = sigma, x0 = x - s v,
        eps = x + (1 - s) v. latents (B, C, h, w), t (B,) integer timesteps (flow: 1000 s),
        cond (B, L', D), alpha, sigma (B,) -> Prediction, (B, C, h, w) each."""
        if self.prediction_type == "flow":
            v = self.unet_output(latents, t, cond).to(latents.dtype)  # (B, C, h, w)
            return from_velocity(latents, v, sigma)
        return self._denoise(latents, t, cond, alpha, sigma)

    @torch.inference_mode()
    def eps(self, latents: torch.Tensor, t: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """The UNet's noise prediction (``denoise`` builds the contract's pair from it).

        latents (B, C, h, w), t (B,) integer timesteps, text_embeddings (B, L', D) (``encode_prompts``
        after ``condition_rows``) -> eps (B, C, h, w). A v-prediction model's output is converted:
        eps = sqrt(a_t) v + sqrt(1 - a_t) x_t (Salimans & Ho 2022, "Progressive distillation", eq. for v).
        """
        if self.prediction_type == "flow":
            raise ValueError(
                f"{self.source}: a flow UNet predicts a velocity, not eps at a timestep: use denoise"
            )
        out = self.unet_output(latents, t, text_embeddings)  # (B, C, h, w)
        if self.prediction_type == "v_prediction":
            a = self._alphas_on_device()[t.to(self.device)].to(out.dtype).view(-1, 1, 1, 1)
            out = a.sqrt() * out + (1 - a).sqrt() * latents.to(out.dtype)
        return out.to(self.work_dtype)

    @torch.inference_mode()
    def unet_output(
        self, latents: torch.Tensor, t: torch.Tensor, text_embeddings: torch.Tensor
    ) -> torch.Tensor:
        """The UNet's raw output (eps, v or a flow velocity, as the model was trained).

        latents (B, C, h, w), t (B,) the time input, text_embeddings (B, L', D) -> (B, C, h, w) in the
        model's dtype. SDXL's added conditions are unpacked from the embeddings.
        """
        cond = text_embeddings.to(self.device, self.dtype)
        if self.family == "sdxl":
            hidden, pooled, time_ids = conditioning.unpack(cond, self._pooled_dim())
            kwargs = {
                "encoder_hidden_states": hidden,
                "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids},
            }
        else:
            kwargs = {"encoder_hidden_states": cond}
        return self.unet(latents.to(self.dtype), t.to(self.device), **kwargs).sample  # (B, C, h, w)

    def _alphas_on_device(self) -> torch.Tensor:
        if self._alphas_device is None or self._alphas_device.device != self.device:
            self._alphas_device = self.alphas_cumprod.to(self.device)
        return self._alphas_device

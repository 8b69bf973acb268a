"""Tiny, randomly initialised SD3- and FLUX.1-layout components, built in-process.

The shapes follow diffusers' SD3 and FLUX test suites (tests/pipelines/stable_diffusion_3,
tests/pipelines/flux: one or two transformer layers, CLIP text models of width 16-32) with the
dimensions made consistent where those suites rely on a hub T5 ("hf-internal-testing/tiny-random-t5"):
the T5 encoder and its tokenizer are built here (``build_t5_tokenizer``: a Unigram vocabulary of
``TINY_WORDS`` and letters). ``save_flow_directory`` writes a complete diffusers directory that
``StableDiffusion3Pipeline`` / ``FluxPipeline.from_pretrained`` and ``diffedit.loading.load_bundle`` read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from diffedit.flow_bundle import FlowBundle
from diffedit.tiny import TINY_WORDS, build_word_tokenizer, tiny_text_config

#: SD3's scheduler config (stabilityai/stable-diffusion-3.5-medium ships shift 3.0).
SD3_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 3.0,
}
#: FLUX.1-dev's scheduler config: dynamic shifting by the image's token count.
FLUX_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
#: FLUX.1-schnell's: no shift at all.
FLUX_SCHNELL_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": False,
}


def build_t5_tokenizer(words: list[str] | tuple[str, ...], model_max_length: int = 512) -> Any:
    """A T5TokenizerFast (Unigram, "▁" word boundaries, </s> appended) knowing ``words`` as single
    tokens; anything else splits into letters. Ids: <pad> 0, </s> 1, <unk> 2, as T5's."""
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + w, -1.0) for w in words]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def tiny_t5(tokenizer: Any, d_model: int) -> Any:
    """A 2-layer T5 encoder of width ``d_model`` over the tokenizer's vocabulary."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_ff=37,
        d_kv=8,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


def tiny_flow_vae(latent_channels: int) -> Any:
    """A 2-block VAE (stride 2) with SD3's scaling and shift factors, no quant convs (as SD3/FLUX)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=latent_channels,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )


def tiny_sd3_components(seed: int = 0, sample_size: int = 16, t5: bool = True) -> dict[str, Any]:
    """A tiny SD3: CLIP-L and CLIP-G of width 16 (projections 16 + 16 = the pooled 32), T5 of width 32
    (the joint width), a 2-layer SD3Transformer2DModel with patch 2 on 4 latent channels. Native size
    ``sample_size * 2`` px; images must be multiples of 4 px."""
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    tokenizer = build_word_tokenizer(TINY_WORDS)
    t5_tokenizer = build_t5_tokenizer(TINY_WORDS)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=sample_size,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=32,
        caption_projection_dim=32,
        pooled_projection_dim=32,
        pos_embed_max_size=64,
    )
    torch.manual_seed(seed + 1)
    vae = tiny_flow_vae(4)
    torch.manual_seed(seed + 2)
    clip_l = CLIPTextModelWithProjection(tiny_text_config(tokenizer, width=16, projection_dim=16))
    torch.manual_seed(seed + 3)
    clip_g = CLIPTextModelWithProjection(tiny_text_config(tokenizer, width=16, projection_dim=16))
    torch.manual_seed(seed + 4)
    return {
        "transformer": transformer,
        "vae": vae,
        "text_encoder": clip_l,
        "tokenizer": tokenizer,
        "text_encoder_2": clip_g,
        "tokenizer_2": build_word_tokenizer(TINY_WORDS),
        "text_encoder_3": tiny_t5(t5_tokenizer, 32) if t5 else None,
        "tokenizer_3": t5_tokenizer if t5 else None,
        "scheduler_config": dict(SD3_SCHEDULER_CONFIG),
    }


def tiny_flux_components(seed: int = 0, sample_size: int = 16, schnell: bool = False) -> dict[str, Any]:
    """A tiny FLUX.1 (dev: the distilled guidance embedding; schnell: none): CLIP-L of width 16 (the
    pooled projection), T5 of width 32 (the joint width), one double and one single block, 4 latent
    channels packed 2x2 into 16. Native size ``sample_size * 2`` px; images must be multiples of 4 px."""
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextModel

    tokenizer = build_word_tokenizer(TINY_WORDS)
    t5_tokenizer = build_t5_tokenizer(TINY_WORDS)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=16,
        guidance_embeds=not schnell,
        axes_dims_rope=[4, 6, 6],
    )
    torch.manual_seed(seed + 1)
    vae = tiny_flow_vae(4)
    torch.manual_seed(seed + 2)
    clip = CLIPTextModel(tiny_text_config(tokenizer, width=16, projection_dim=16))
    torch.manual_seed(seed + 3)
    return {
        "transformer": transformer,
        "vae": vae,
        "text_encoder": clip,
        "tokenizer": tokenizer,
        "text_encoder_2": tiny_t5(t5_tokenizer, 32),
        "tokenizer_2": t5_tokenizer,
        "scheduler_config": dict(FLUX_SCHNELL_SCHEDULER_CONFIG if schnell else FLUX_SCHEDULER_CONFIG),
        "sample_size": sample_size,
    }


def tiny_sd3_bundle(seed: int = 0, dtype: torch.dtype = torch.float32, **kwargs: Any) -> FlowBundle:
    """A ``FlowBundle`` of tiny random SD3 components on the CPU."""
    parts = tiny_sd3_components(seed, **kwargs)
    return _bundle(parts, dtype, f"tiny-sd3:{seed}")


def tiny_flux_bundle(seed: int = 0, dtype: torch.dtype = torch.float32, **kwargs: Any) -> FlowBundle:
    """A ``FlowBundle`` of tiny random FLUX.1 components on the CPU (dev unless ``schnell=True``)."""
    parts = tiny_flux_components(seed, **kwargs)
    return _bundle(parts, dtype, f"tiny-flux:{seed}")


def _bundle(parts: dict[str, Any], dtype: torch.dtype, source: str) -> FlowBundle:
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        if parts.get(name) is not None and dtype != torch.float32:  # built in float32
            parts[name].to(dtype)
    return FlowBundle(**parts, source=source)


def save_flow_directory(path: str | Path, family: str, parts: dict[str, Any]) -> Path:
    """Write flow components as a diffusers directory: ``StableDiffusion3Pipeline``'s or ``FluxPipeline``'s
    model_index.json, safetensors weights, the tokenizers and the scheduler config."""
    import diffusers

    path = Path(path)
    classes = {
        "transformer": ["diffusers", type(parts["transformer"]).__name__],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    }
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        if parts.get(name) is not None:
            classes[name] = ["transformers", type(parts[name]).__name__]
    for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        if parts.get(name) is not None:
            classes[name] = [
                "transformers",
                "T5TokenizerFast" if "T5" in type(parts[name]).__name__ else "CLIPTokenizer",
            ]
    for name, (_, _cls) in classes.items():
        if name == "scheduler":
            diffusers.FlowMatchEulerDiscreteScheduler.from_config(parts["scheduler_config"]).save_pretrained(
                path / name
            )
        elif name.startswith("tokenizer"):
            parts[name].save_pretrained(path / name)
        else:
            parts[name].save_pretrained(path / name, safe_serialization=True)
    index: dict[str, Any] = {
        "_class_name": "StableDiffusion3Pipeline" if family == "sd3" else "FluxPipeline",
        "_diffusers_version": diffusers.__version__,
        **classes,
    }
    if family == "sd3":
        for name in ("text_encoder_3", "tokenizer_3"):
            index.setdefault(name, [None, None])
    else:
        index.update({"image_encoder": [None, None], "feature_extractor": [None, None]})
    if parts.get("sample_size") is not None:
        # The native latent side, named after FluxPipeline's attribute; diffedit's loader reads it
        # (real FLUX directories do not carry it and get FluxPipeline's 128).
        index["default_sample_size"] = parts["sample_size"]
    (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return path

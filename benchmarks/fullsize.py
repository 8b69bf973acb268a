"""Full-size flow models counted on the meta device: parameters, FLOPs per evaluation, memory.

    python -m benchmarks.fullsize [--size 1024] [--out out/fullsize.md]

SD3.5-medium and FLUX.1-dev/schnell are built from their published configs (the diffusers
``config.json`` of stabilityai/stable-diffusion-3.5-medium and black-forest-labs/FLUX.1-dev|schnell,
written out below) with no weights at all (``torch.device("meta")``: shapes only), so a 12 B model costs
nothing here. For each: stored parameters per component (the state dict) against the published figure, FLOPs of one
transformer evaluation at ``--size``² (``torch.utils.flop_counter``: matmuls and attention, 2 FLOPs per
multiply-add), weight memory at bf16 and fp8, and the evaluations and FLOPs of one DiffEdit edit at the
preset's settings (``configs/models/*.yaml``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

#: stabilityai/stable-diffusion-3.5-medium transformer/config.json (MMDiT-X: dual attention in blocks 0-12).
SD35_MEDIUM = {
    "attention_head_dim": 64, "caption_projection_dim": 1536, "in_channels": 16, "joint_attention_dim": 4096,
    "num_attention_heads": 24, "num_layers": 24, "out_channels": 16, "patch_size": 2,
    "pooled_projection_dim": 2048, "pos_embed_max_size": 384, "sample_size": 128, "qk_norm": "rms_norm",
    "dual_attention_layers": list(range(13)),
}  # fmt: skip
#: black-forest-labs/FLUX.1-dev transformer/config.json (schnell: guidance_embeds false).
FLUX_DEV = {
    "attention_head_dim": 128, "guidance_embeds": True, "in_channels": 64, "joint_attention_dim": 4096,
    "num_attention_heads": 24, "num_layers": 19, "num_single_layers": 38, "patch_size": 1,
    "pooled_projection_dim": 768, "axes_dims_rope": [16, 56, 56],
}  # fmt: skip
#: The text encoders both families use (openai/clip-vit-large-patch14, laion CLIP-bigG, google/t5-v1_1-xxl).
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
          "projection_dim": 768, "vocab_size": 49408, "max_position_embeddings": 77, "hidden_act": "quick_gelu"}  # fmt: skip
CLIP_G = {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20, "num_hidden_layers": 32,
          "projection_dim": 1280, "vocab_size": 49408, "max_position_embeddings": 77, "hidden_act": "gelu"}  # fmt: skip
T5_XXL = {"d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24, "vocab_size": 32128,
          "feed_forward_proj": "gated-gelu", "is_gated_act": True}  # fmt: skip
#: The 16-channel VAE of SD3 and FLUX (shift and scale differ, not the shapes).
VAE16 = {"block_out_channels": [128, 256, 512, 512], "latent_channels": 16, "layers_per_block": 2,
         "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
         "use_quant_conv": False, "use_post_quant_conv": False}  # fmt: skip

#: Published sizes: FLUX.1's model card ("12 billion parameter rectified flow transformer"; 11.9 B in the
#: 23.8 GB bf16 checkpoint); SD3.5 Medium's ("2.5 billion parameters", MMDiT-X); keras-hub's preset of
#: stable_diffusion_3.5_medium: 3,371,793,763 for CLIP-L + CLIP-G + MMDiT-X + VAE; T5-XXL's encoder 4.76 B.
PUBLISHED = {
    "flux-dev transformer": 11.9e9,
    "sd3.5-medium transformer": 2.5e9,
    "sd3.5-medium CLIP-L + CLIP-G + transformer + VAE": 3_371_793_763,
    "T5-XXL encoder": 4.76e9,
}


def _meta(build: Any) -> Any:
    with torch.device("meta"):
        return build()


def components(family: str) -> dict[str, Any]:
    """The family's modules on the meta device."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    t5 = _meta(lambda: T5EncoderModel(T5Config(**T5_XXL)))
    vae = _meta(lambda: AutoencoderKL(**VAE16))
    if family == "sd3.5-medium":
        return {
            "transformer": _meta(lambda: SD3Transformer2DModel(**SD35_MEDIUM)),
            "CLIP-L": _meta(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L))),
            "CLIP-G": _meta(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G))),
            "T5-XXL": t5,
            "VAE": vae,
        }
    config = {**FLUX_DEV, "guidance_embeds": family == "flux-dev"}
    return {
        "transformer": _meta(lambda: FluxTransformer2DModel(**config)),
        "CLIP-L": _meta(lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L))),
        "T5-XXL": t5,
        "VAE": vae,
    }


def count(module: Any) -> int:
    """Stored numbers: the state dict (parameters and persistent buffers: SD3.5-medium's 384 x 384 x 1536
    position-embedding table, 226 M, is a buffer its checkpoint stores and its published size counts)."""
    names = {name for name, _ in module.named_parameters(remove_duplicate=False)}  # tied weights: every name
    buffers = sum(t.numel() for name, t in module.state_dict().items() if name not in names)
    return sum(p.numel() for p in module.parameters()) + buffers  # parameters() counts a tied weight once


def transformer_flops(family: str, transformer: Any, size: int) -> int:
    """FLOPs of one evaluation of one sample at size² px (8-px latents, 16 channels)."""
    from torch.utils.flop_counter import FlopCounterMode

    h = w = size // 8
    with torch.device("meta"), FlopCounterMode(display=False) as counter, torch.no_grad():
        if family == "sd3.5-medium":
            transformer(
                hidden_states=torch.zeros(1, 16, h, w), timestep=torch.ones(1),
                encoder_hidden_states=torch.zeros(1, 77 + 256, 4096), pooled_projections=torch.zeros(1, 2048),
            )  # fmt: skip
        else:
            text = 512 if family == "flux-dev" else 256
            transformer(
                hidden_states=torch.zeros(1, (h // 2) * (w // 2), 64), timestep=torch.ones(1),
                guidance=torch.ones(1) if family == "flux-dev" else None,
                pooled_projections=torch.zeros(1, 768), encoder_hidden_states=torch.zeros(1, text, 4096),
                txt_ids=torch.zeros(text, 3), img_ids=torch.zeros((h // 2) * (w // 2), 3),
            )  # fmt: skip
    return int(counter.get_total_flops())


#: Evaluations of one edit at the preset's settings (mask 2n, encode floor(r S), decode K or 2K with CFG).
PRESET_EVALS = {"sd3.5-medium": (20, 32, 64), "flux-dev": (20, 22, 22), "flux-schnell": (20, 3, 3)}


def report(size: int) -> list[str]:
    lines = [
        "| model | component | parameters (state dict) | bf16 GB | fp8 GB | published |",
        "|---|---|---:|---:|---:|---|",
    ]
    flops_lines = [
        "",
        f"| model | FLOPs / evaluation at {size}² | evaluations / edit (mask + encode + decode) | TFLOPs / edit |",
        "|---|---:|---|---:|",
    ]
    for family in ("sd3.5-medium", "flux-dev", "flux-schnell"):
        parts = components(family)
        for name, module in parts.items():
            n = count(module)
            key = (
                f"{family} {name}" if name == "transformer" else f"{name} encoder" if name == "T5-XXL" else ""
            )
            published = PUBLISHED.get(key.replace("T5-XXL encoder encoder", "T5-XXL encoder"))
            shown = f"{published / 1e9:.2f} B ({(n - published) / published:+.1%})" if published else ""
            lines.append(f"| {family} | {name} | {n:,} | {2 * n / 1e9:.1f} | {n / 1e9:.1f} | {shown} |")
        if family == "sd3.5-medium":
            n = sum(count(parts[k]) for k in ("transformer", "CLIP-L", "CLIP-G", "VAE"))
            ref = PUBLISHED["sd3.5-medium CLIP-L + CLIP-G + transformer + VAE"]
            lines.append(
                f"| {family} | CLIP-L + CLIP-G + transformer + VAE | {n:,} | | | keras-hub {ref:,} ({(n - ref) / ref:+.2%}) |"
            )
        flops = transformer_flops(family, parts["transformer"], size)
        evals = PRESET_EVALS[family]
        per_edit = flops * sum(evals) / 1e12
        flops_lines.append(
            f"| {family} | {flops / 1e12:.2f} T | {' + '.join(map(str, evals))} = {sum(evals)} | {per_edit:.0f} |"
        )
    return lines + flops_lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fullsize", description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    text = "\n".join(report(args.size))
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

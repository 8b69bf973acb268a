"""Tiny, randomly initialised SD- and SDXL-layout components, built in-process.

For tests and benchmarks on machines that cannot download a checkpoint. The SD UNet, VAE and text
encoder follow the shapes of diffusers' last DiffEdit test suite (v0.34.0,
tests/pipelines/stable_diffusion_2/test_stable_diffusion_diffedit.py); the SDXL ones add what diffusers'
SDXL test suite (tests/pipelines/stable_diffusion_xl/test_stable_diffusion_xl.py) adds: a second,
projecting text encoder, ``addition_embed_type="text_time"`` and the matching embedding widths. The
tokenizers, which those suites fetched from the hub, are built here from a word list
(``build_word_tokenizer``). ``save_sd_directory`` / ``save_sdxl_directory`` write them as diffusers
model directories.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import torch

from diffedit.bundle import ModelBundle

#: Words the tiny tokenizer knows as single tokens; anything else splits into letters.
TINY_WORDS = [
    "a",
    "an",
    "the",
    "and",
    "on",
    "of",
    "with",
    "in",
    "photo",
    "picture",
    "image",
    "background",
    "red",
    "green",
    "blue",
    "yellow",
    "orange",
    "purple",
    "pink",
    "white",
    "black",
    "grey",
    "gray",
    "brown",
    "cat",
    "dog",
    "bowl",
    "fruit",
    "apple",
    "banana",
    "car",
    "bus",
    "circle",
    "square",
    "triangle",
    "star",
]

#: The scheduler config of Stable Diffusion 1.x (DDIM), as its model directory ships it.
SD_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


def build_word_tokenizer(words: list[str] | tuple[str, ...], model_max_length: int = 16) -> Any:
    """A CLIPTokenizer whose BPE vocabulary holds ``words`` (lower-case letters) as single tokens.

    The vocabulary has CLIP's special tokens, every letter (alone and word-final), and the BPE merges
    that build each word (``_word_bpe``). Unknown words fall back to letters and merged pieces.
    """
    from transformers import CLIPTokenizer

    words = list(dict.fromkeys(w.lower() for w in words))
    for word in words:
        if not word.isalpha() or not word.isascii():
            raise ValueError(f"tokenizer words must be ASCII letters, got {word!r}")
    vocab, merges = _word_bpe(words)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    tokenizer.model_max_length = model_max_length
    return tokenizer


def _word_bpe(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """BPE vocabulary and merges that build each of ``words`` into one token; deterministic.

    Classic BPE training (Sennrich et al. 2016) on the word list, each word counted once: merge the
    most frequent adjacent pair everywhere, ties broken by the pair's text, until every word is one
    symbol. Merges learnt this way replay exactly on the training words (hand-made merge chains
    collide: "re" of "red" would split "green"). Ids: CLIP's two special tokens, the 26 letters,
    the 26 word-final letters, then each merge's result in merge order. (The ``tokenizers`` BPE
    trainer gives the same kind of result, but numbers tied symbols in hash-map order, so the ids
    changed from one process to the next.)
    """
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = ["<|startoftext|>", "<|endoftext|>", *letters, *(c + "</w>" for c in letters)]
    seqs = [[*w[:-1], w[-1] + "</w>"] for w in words]  # symbols per word, the last one word-final
    merges: list[tuple[str, str]] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for seq in seqs:
            for pair in itertools.pairwise(seq):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))  # most frequent; ties by text
        merges.append(best)
        merged = best[0] + best[1]
        if merged not in tokens:
            tokens.append(merged)
        for k, seq in enumerate(seqs):
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[k] = out
    return {t: i for i, t in enumerate(tokens)}, merges


def tiny_vae(sample_size: int, **config: Any) -> Any:
    """The tiny VAE of the SD and SDXL test models: 2 blocks (32, 64 channels), 4 latent channels, one
    downsampling (latents of ``sample_size``, images of twice it); ``config``: further config values."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=sample_size * 2,
        **config,
    )


def tiny_text_config(tokenizer: Any, *, width: int, projection_dim: int) -> Any:
    """The CLIP text config of the tiny test models: 5 layers of ``width``, 4 heads, the tokenizer's
    vocabulary and length (ids 0/1: bos and eos/pad, as ``build_word_tokenizer`` numbers them)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=width,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        hidden_act="gelu",
        projection_dim=projection_dim,
    )


def tiny_components(seed: int = 0, sample_size: int = 16, cross_attention_dim: int = 32) -> dict[str, Any]:
    """The five components of a tiny SD-layout model, deterministic for a given ``seed``.

    VAE stride 2 (two blocks) and a two-level UNet: images must be multiples of 4 pixels, and the
    native size is ``sample_size * 2`` pixels.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = build_word_tokenizer(TINY_WORDS)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    vae = tiny_vae(sample_size)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(tiny_text_config(tokenizer, width=cross_attention_dim, projection_dim=512))
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler_config": dict(SD_SCHEDULER_CONFIG),
    }


def tiny_bundle(seed: int = 0, dtype: torch.dtype = torch.float32, **kwargs: Any) -> ModelBundle:
    """A ``ModelBundle`` of tiny random components on the CPU (float32, or float64 for exactness tests)."""
    parts = tiny_components(seed, **kwargs)
    for name in ("unet", "vae", "text_encoder"):
        parts[name].to(dtype)
    return ModelBundle(**parts, source=f"tiny:{seed}")


def save_tiny_model(path: str | Path, seed: int = 0, **kwargs: Any) -> Path:
    """Write a tiny model as a diffusers Stable Diffusion directory (safetensors weights).

    The result loads with ``diffusers.StableDiffusionPipeline.from_pretrained(path)`` and with
    ``diffedit.loading.load_bundle(path)``.
    """
    return save_sd_directory(path, **tiny_components(seed, **kwargs))


def save_sd_directory(
    path: str | Path,
    *,
    unet: Any,
    vae: Any,
    text_encoder: Any,
    tokenizer: Any,
    scheduler_config: dict[str, Any],
) -> Path:
    """Write components as a diffusers Stable Diffusion directory: model_index.json, safetensors
    weights in unet/, vae/, text_encoder/, the tokenizer and the scheduler config as given (its
    ``_class_name``: DDIM by default; ``FlowMatchEulerDiscreteScheduler`` for a flow-trained UNet)."""
    import diffusers

    path = Path(path)
    for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        module.save_pretrained(path / name, safe_serialization=True)
    tokenizer.save_pretrained(path / "tokenizer")
    scheduler_class = getattr(diffusers, scheduler_config.get("_class_name", "DDIMScheduler"))
    scheduler_class.from_config(scheduler_config).save_pretrained(path / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", scheduler_class.__name__],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
    }
    (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return path


#: The scheduler config SDXL base 1.0 ships (EulerDiscreteScheduler; its schedule is SD's, and DDIM
#: reads only the schedule keys).
SDXL_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}


def tiny_sdxl_components(seed: int = 0, sample_size: int = 16) -> dict[str, Any]:
    """The seven components of a tiny SDXL-layout model, deterministic for a given ``seed``.

    Two text encoders of width 32 (the second a CLIPTextModelWithProjection, projection 32) give
    cross-attention width 64; the added conditions are the pooled 32 and 6 size ids of 8 sinusoidal
    features each (80). VAE stride 2 with ``force_upcast`` and SDXL's scaling factor; native size
    ``sample_size * 2`` pixels.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = build_word_tokenizer(TINY_WORDS)
    tokenizer_2 = build_word_tokenizer(TINY_WORDS)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=32 + 6 * 8,  # pooled + 6 size ids x 8 features
        cross_attention_dim=32 + 32,  # both encoders' hidden states, concatenated
        norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    vae = tiny_vae(sample_size, scaling_factor=0.13025, force_upcast=True)  # SDXL VAE's config values
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(tiny_text_config(tokenizer, width=32, projection_dim=32))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(tiny_text_config(tokenizer_2, width=32, projection_dim=32))
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": tokenizer_2,
        "scheduler_config": dict(SDXL_SCHEDULER_CONFIG),
        "force_zeros_for_empty_prompt": True,
    }


def tiny_sdxl_bundle(seed: int = 0, dtype: torch.dtype = torch.float32, **kwargs: Any) -> ModelBundle:
    """A ``ModelBundle`` of tiny random SDXL components on the CPU (float32, or float64 for exactness)."""
    parts = tiny_sdxl_components(seed, **kwargs)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        parts[name].to(dtype)
    return ModelBundle(**parts, source=f"tiny-sdxl:{seed}")


def save_tiny_sdxl_model(path: str | Path, seed: int = 0, **kwargs: Any) -> Path:
    """Write a tiny SDXL model as a diffusers SDXL directory (safetensors weights); it loads with
    ``diffusers.StableDiffusionXLPipeline.from_pretrained(path)`` and ``diffedit.loading.load_bundle(path)``."""
    return save_sdxl_directory(path, **tiny_sdxl_components(seed, **kwargs))


def save_sdxl_directory(
    path: str | Path,
    *,
    unet: Any,
    vae: Any,
    text_encoder: Any,
    tokenizer: Any,
    text_encoder_2: Any,
    tokenizer_2: Any,
    scheduler_config: dict[str, Any],
    force_zeros_for_empty_prompt: bool = True,
) -> Path:
    """Write components as a diffusers SDXL directory (``StableDiffusionXLPipeline``'s model_index.json,
    safetensors weights, both tokenizers, the scheduler config as given)."""
    import diffusers

    path = Path(path)
    modules = (
        ("unet", unet),
        ("vae", vae),
        ("text_encoder", text_encoder),
        ("text_encoder_2", text_encoder_2),
    )
    for name, module in modules:
        module.save_pretrained(path / name, safe_serialization=True)
    tokenizer.save_pretrained(path / "tokenizer")
    tokenizer_2.save_pretrained(path / "tokenizer_2")
    scheduler_class = getattr(diffusers, scheduler_config.get("_class_name", "DDIMScheduler"))
    scheduler_class.from_config(scheduler_config).save_pretrained(path / "scheduler")
    index = {
        "_class_name": "StableDiffusionXLPipeline",
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", scheduler_class.__name__],
        "image_encoder": [None, None],
        "feature_extractor": [None, None],
        "force_zeros_for_empty_prompt": force_zeros_for_empty_prompt,
    }
    (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return path


def gaussian_eps(alphas_cumprod: torch.Tensor, sigma: float):
    """The exact noise predictor for data x_0 ~ N(0, sigma^2 I), honouring the eps contract:

        E[eps | x_t] = sqrt(1 - a_t) x_t / (a_t sigma^2 + 1 - a_t)

    With it the probability-flow ODE that DDIM discretises is exact, so DDIM encoding followed by
    decoding differs from the identity only by discretisation error. Ignores the text embeddings.
    """

    def eps(x: torch.Tensor, t: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        a = alphas_cumprod[t.cpu()].to(x.dtype).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        return (1 - a).sqrt() * x / (a * sigma**2 + 1 - a)

    return eps


def save_hub_snapshot(
    model_dir: str | Path,
    cache_dir: str | Path,
    repo_id: str,
    *,
    commit: str | None = None,
    branch: str = "main",
) -> str:
    """Put a model directory into a Hugging Face Hub cache as ``huggingface_hub`` lays one out, so that
    ``snapshot_download(repo_id, cache_dir=cache_dir)`` finds it with ``HF_HUB_OFFLINE=1``::

        <cache_dir>/models--<org>--<name>/blobs/<sha256 of the file>
        <cache_dir>/models--<org>--<name>/snapshots/<commit>/<path>  -> ../../blobs/<sha256>
        <cache_dir>/models--<org>--<name>/refs/<branch>              holds <commit>

    ``commit`` defaults to a sha1 of the files' hashes (40 hex digits, like a git commit). Returns it.
    """
    import hashlib
    import os

    model_dir, cache_dir = Path(model_dir), Path(cache_dir)
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    if commit is None:
        listing = "".join(f"{p.relative_to(model_dir).as_posix()}:{d}\n" for p, d in digests.items())
        commit = hashlib.sha1(listing.encode()).hexdigest()
    for path, digest in digests.items():
        blob = repo / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.write_bytes(path.read_bytes())
        link = repo / "snapshots" / commit / path.relative_to(model_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / branch).write_text(commit)
    return commit


#: ``python -m diffedit.tiny --family F``: what each family writes.
FAMILY_WRITERS = ("sd15", "sdxl", "sd3", "flux", "flux-schnell")


def save_tiny_family(family: str, path: str | Path, seed: int = 0) -> Path:
    """Write a tiny random model of ``family`` (``FAMILY_WRITERS``) as a complete diffusers directory
    (model_index.json, safetensors weights, tokenizers, scheduler config)."""
    if family == "sd15":
        return save_tiny_model(path, seed)
    if family == "sdxl":
        return save_tiny_sdxl_model(path, seed)
    from diffedit.tiny_flow import save_flow_directory, tiny_flux_components, tiny_sd3_components

    if family == "sd3":
        return save_flow_directory(path, "sd3", tiny_sd3_components(seed))
    if family in ("flux", "flux-schnell"):
        return save_flow_directory(path, "flux", tiny_flux_components(seed, schnell=family == "flux-schnell"))
    raise ValueError(f"unknown family {family!r}: expected one of {', '.join(FAMILY_WRITERS)}")


def main(argv: list[str] | None = None) -> int:
    """``python -m diffedit.tiny --family sd15|sdxl|sd3|flux|flux-schnell --out DIR [--seed N]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m diffedit.tiny", description=main.__doc__)
    parser.add_argument("--family", required=True, choices=FAMILY_WRITERS)
    parser.add_argument("--out", required=True, help="the directory to write (created)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = save_tiny_family(args.family, args.out, args.seed)
    print(f"wrote a tiny random {args.family} model to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

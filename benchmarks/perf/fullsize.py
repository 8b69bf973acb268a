"""Full-size Stable Diffusion architectures with random weights, from the published configs.

``arch_configs/{sd15,sd21,sdxl}.json`` hold the UNet, VAE and text-encoder configs of
runwayml/stable-diffusion-v1-5, stabilityai/stable-diffusion-2-1 and
stabilityai/stable-diffusion-xl-base-1.0 as their ``config.json`` files publish them (typed in;
nothing is downloaded). The parameter counts check them: UNets of 859.5 M, 865.9 M and 2,567.5 M
parameters, text encoders of 123.1 M (CLIP ViT-L), 340.4 M (OpenCLIP ViT-H, 23 layers) and 694.7 M
(OpenCLIP ViT-bigG with projection), VAEs of 83.7 M (``tests/benchmarks/test_archs.py``).

What differs from the published models, and why:

* the weights are random (each module's own initialisation, seeded): the figures that depend only
  on the layout (parameters, memory, seconds and FLOPs per evaluation, evaluations per edit) are
  those of the real model; the edited pixels are noise;
* the tokenizer is ``diffedit.tiny.build_word_tokenizer`` over a small word list, padded to CLIP's 77
  tokens (CLIP's BPE vocabulary is a download); the text encoders keep CLIP's 49,408-row embedding,
  and their bos/eos/pad ids are the word tokenizer's (0, 1, 1) so that the pooled output reads the
  end-of-text token;
* the scheduler is DDIM with the published betas and prediction type (SDXL ships Euler; DiffEdit
  inverts with DDIM);
* ``sample_size`` of the UNet and VAE may be set to a smaller resolution (``size``): it is the
  resolution the editor's "fit" policy scales images to, not part of the architecture, and lets
  the real layers run here at e.g. 128 px.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

ARCH_DIR = Path(__file__).with_name("arch_configs")
#: The architectures, in report order.
ARCHS = ("sd15", "sd21", "sdxl")
#: Words of the stand-in tokenizer (the shapes world's and the tiny models').
_WORDS_MAX_LENGTH = 77


def arch_config(name: str) -> dict[str, Any]:
    """The published configs of architecture ``name`` (see ``ARCHS``)."""
    path = ARCH_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"unknown architecture {name!r}: expected one of {list(ARCHS)}")
    return json.loads(path.read_text())


def _kwargs(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _text_config(config: dict[str, Any]) -> Any:
    from transformers import CLIPTextConfig

    # the word tokenizer's special ids (CLIP's are 49406/49407): pooling reads the eos token
    return CLIPTextConfig(**_kwargs(config), bos_token_id=0, eos_token_id=1, pad_token_id=1)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def build_modules(
    name: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0,
    size: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The UNet, VAE and text encoder(s) of ``name`` with random weights (seeded per module), built
    directly in ``dtype`` on ``device`` (``"meta"``: shapes only, no memory: for counting).

    ``size``: the native resolution to write into the configs (``sample_size``), in pixels; None
    keeps the published one. Returns ``unet``, ``vae``, ``text_encoder`` and, for SDXL,
    ``text_encoder_2``.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    cfg = arch_config(name)
    unet_cfg, vae_cfg = _kwargs(cfg["unet"]), _kwargs(cfg["vae"])
    if size is not None:
        stride = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
        if size % stride:
            raise ValueError(f"size {size} must be a multiple of the VAE stride {stride}")
        unet_cfg["sample_size"], vae_cfg["sample_size"] = size // stride, size
    makers = {
        "unet": lambda: UNet2DConditionModel.from_config(unet_cfg),
        "vae": lambda: AutoencoderKL.from_config(vae_cfg),
        "text_encoder": lambda: CLIPTextModel(_text_config(cfg["text_encoder"])),
    }
    if "text_encoder_2" in cfg:
        makers["text_encoder_2"] = lambda: CLIPTextModelWithProjection(_text_config(cfg["text_encoder_2"]))
    out: dict[str, Any] = {}
    with _default_dtype(dtype), torch.device(device):
        for k, (part, make) in enumerate(makers.items()):
            torch.manual_seed(seed + k)
            out[part] = make().eval().requires_grad_(False)
    return out


def build_tokenizer() -> Any:
    """The stand-in tokenizer: CLIP's special tokens and padding to 77, a small word vocabulary."""
    from diffedit.shapes.vocab import OBJECT_COLOURS
    from diffedit.tiny import TINY_WORDS, build_word_tokenizer

    words = [*TINY_WORDS, *OBJECT_COLOURS, "circle", "square", "triangle", "star", "photo", "of"]
    return build_word_tokenizer(sorted(set(words)), model_max_length=_WORDS_MAX_LENGTH)


def count_parameters(modules: dict[str, Any]) -> dict[str, int]:
    """Parameters per module (works on the meta device)."""
    return {k: sum(p.numel() for p in m.parameters()) for k, m in modules.items()}


def save_fullsize(
    name: str, path: str | Path, *, dtype: torch.dtype = torch.float32, seed: int = 0, size: int | None = None
) -> Path:
    """Write architecture ``name`` with random weights as a diffusers model directory that
    ``diffedit.loading.load_bundle`` reads (safetensors in ``dtype``). SD 1.5 and 2.1 through
    ``diffedit.tiny.save_sd_directory``; SDXL through the SDXL writer of ``diffedit.tiny`` when it
    has one."""
    from diffedit import tiny

    cfg = arch_config(name)
    parts = build_modules(name, dtype=dtype, seed=seed, size=size)
    tokenizer = build_tokenizer()
    scheduler_config = _kwargs(cfg["scheduler"])
    if "text_encoder_2" in parts:
        writer = getattr(tiny, "save_sdxl_directory", None)
        if writer is None:
            raise NotImplementedError(
                "SDXL directories need diffedit.tiny.save_sdxl_directory (SDXL support)"
            )
        return writer(
            path, **parts, tokenizer=tokenizer, tokenizer_2=tokenizer, scheduler_config=scheduler_config
        )
    return tiny.save_sd_directory(path, **parts, tokenizer=tokenizer, scheduler_config=scheduler_config)

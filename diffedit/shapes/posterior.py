"""A proper (narrow) posterior for the shapes VAE, without touching its mean.

The shapes VAE was trained on the reconstruction of the posterior *mean* plus a tiny KL term
(``train.py``, phase 1). The log-variance half of ``quant_conv``'s output therefore only ever saw the
KL gradient, which pulls it to 0: the posterior std came out ~1.0 everywhere, as large as the
latents themselves (mode std ~1.1). Anything that samples the posterior (diffusers'
``AutoencoderKL.encode(x).latent_dist.sample()``, which diffusers' DiffEdit ``invert`` uses) then
adds noise of the latents' own size: a decoded sample loses ~12 dB against the mode.

``set_posterior_std`` makes the posterior a proper narrow one, as in Stable Diffusion's VAE, by
setting the log-variance half of ``quant_conv`` (output channels C..2C-1 of a 1x1 conv) to weights
0 and bias ``2 ln(sigma)``: every latent element then has std ``sigma`` (in the VAE's unscaled latent
units). The mean half (channels 0..C-1) is not touched, so ``latent_dist.mode()`` and everything
built on it (our DiffEdit, the UNet's training data) stay bit-identical.

``sigma`` is chosen by measurement (``measure``): the largest std whose decoded posterior samples stay
within 0.05 dB of the mode's reconstruction PSNR on held-out training-range scenes. On shapes-v2
(whose VAE shapes-v3 keeps):
sigma 0.1 loses 0.8 dB, 0.05 loses 0.2 dB, 0.02 loses 0.03 dB, 0.01 loses 0.01 dB; 0.02 is 1.8 % of
the mode latents' std (1.10), so a posterior sample is the mode up to noise the decoder cannot show.

    python -m diffedit.shapes.posterior models/shapes-v3 --sigma 0.02   # rewrite the VAE weights
    python -m diffedit.shapes.posterior models/shapes-v3 --measure-only  # the table above
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import torch

#: The posterior std written into the bundled model (unscaled latent units); see the module docstring.
POSTERIOR_STD = 0.02
#: Scenes for ``measure``: training-range seeds that no training phase used (VAE: 5,000,000+ for
#: 1,200 x 12 seeds; scaling factor 9,000,000+; diffusion 0-29,999).
MEASURE_SEED_BASE = 9_500_000
WEIGHTS = "diffusion_pytorch_model.safetensors"


def set_posterior_std(vae: torch.nn.Module, sigma: float) -> None:
    """Set ``vae``'s posterior std to ``sigma`` everywhere, in place; the posterior mean is unchanged.

    ``vae`` is a diffusers ``AutoencoderKL`` with a ``quant_conv`` (1x1 conv, 2C outputs: mean then
    log-variance, ``DiagonalGaussianDistribution``'s layout).
    """
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a finite value > 0, got {sigma}")
    conv = getattr(vae, "quant_conv", None)
    if conv is None:
        raise ValueError(
            "the VAE has no quant_conv (use_quant_conv=False): its log-variance is not separable"
        )
    c = conv.out_channels // 2
    with torch.no_grad():
        conv.weight[c:].zero_()
        conv.bias[c:].fill_(2.0 * math.log(sigma))


def rewrite_weights(model_dir: Path, sigma: float) -> None:
    """Rewrite ``<model_dir>/vae``'s safetensors with ``set_posterior_std``'s two tensors changed and
    every other tensor (and the file's metadata) as it was."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = Path(model_dir) / "vae" / WEIGHTS
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    weight, bias = tensors["quant_conv.weight"], tensors["quant_conv.bias"]  # (2C, 2C, 1, 1), (2C,)
    c = weight.shape[0] // 2
    weight[c:] = 0.0
    bias[c:] = 2.0 * math.log(sigma)
    save_file(tensors, str(path), metadata=metadata)


@torch.inference_mode()
def measure(vae: torch.nn.Module, sigmas: Sequence[float], n: int = 64, seed: int = 0) -> dict[str, float]:
    """Reconstruction PSNR (dB, images in [-1, 1], peak 2) of the mode and of one posterior sample
    with std ``s`` for each ``s`` in ``sigmas``, on ``n`` scenes from ``MEASURE_SEED_BASE``; also the
    model's own posterior std (mean over elements), a sample of its own posterior's PSNR, and the
    mode latents' std."""
    from diffedit.images import pil_to_tensor
    from diffedit.shapes.scenes import sample_scene

    x = torch.stack([pil_to_tensor(sample_scene(MEASURE_SEED_BASE + i).image) for i in range(n)])
    dist = vae.encode(x).latent_dist
    mean = dist.mode()  # (n, C, h, w)

    def psnr(z: torch.Tensor) -> float:
        y = vae.decode(z).sample.clamp(-1, 1)
        return 10 * math.log10(4.0 / float(((y - x) ** 2).mean()))

    gen = torch.Generator().manual_seed(seed)
    out = {"posterior_std": float(dist.std.mean()), "mode_std": float(mean.std()), "mode": psnr(mean)}
    out["sample"] = psnr(dist.sample(generator=gen))  # the model's own posterior
    for s in sigmas:
        out[f"sample_sigma_{s:g}"] = psnr(mean + s * torch.randn(mean.shape, generator=gen))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffedit.shapes.posterior", description=__doc__)
    p.add_argument("model", type=Path, help="a diffusers SD directory with a vae/ subfolder")
    p.add_argument("--sigma", type=float, default=POSTERIOR_STD, help="posterior std to write")
    p.add_argument("--measure-only", action="store_true", help="print the measurements, write nothing")
    args = p.parse_args(argv)
    from diffusers import AutoencoderKL

    torch.set_num_threads(1)
    vae = AutoencoderKL.from_pretrained(str(args.model / "vae")).eval()
    before = measure(vae, [1.0, 0.1, 0.05, 0.02, 0.01])
    print("before:", {k: round(v, 3) for k, v in before.items()})
    if args.measure_only:
        return 0
    rewrite_weights(args.model, args.sigma)
    vae = AutoencoderKL.from_pretrained(str(args.model / "vae")).eval()
    after = measure(vae, [])
    print("after: ", {k: round(v, 3) for k, v in after.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

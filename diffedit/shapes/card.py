"""Model-card evidence for a trained shapes model: a grid of samples from captions, checked by the
deterministic classifier, and the VAE's reconstruction PSNR on held-out scenes.

    python -m diffedit.shapes.card models/shapes-v3    # writes samples.png and sample_check.json

Samples come from ``diffusers.StableDiffusionPipeline.from_pretrained(model_dir)`` (DDIM, 50 steps,
classifier-free guidance 5), so the check also proves that the directory loads as a pipeline. A
flow-trained UNet (``diffedit.shapes.train --objective flow``: a ``FlowMatchEulerDiscreteScheduler``,
which StableDiffusionPipeline cannot step) samples through the project's own bundle instead: DiffEdit's
decoding with an all-ones mask from pure noise (s = 1), which is text-to-image Euler sampling with
classifier-free guidance on the same flow grid (``diffedit.decode``).
"""

from __future__ import annotations

import argparse
import json
import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from diffedit.loading.layout import names_flow_scheduler
from diffedit.shapes.classify import classify_region, object_pixels
from diffedit.shapes.scenes import article, eval_scene_seed, sample_scene
from diffedit.shapes.vocab import BACKGROUND_COLOURS, OBJECT_COLOURS, SHAPES, TEXTURES


def check_captions(seed: int = 0) -> list[str]:
    """One single-object caption per (colour, shape), backgrounds cycling; then 8 held-out captions
    of two-object scenes."""
    rng = np.random.default_rng(seed)
    captions = []
    for i, (colour, shape) in enumerate((c, s) for c in OBJECT_COLOURS for s in SHAPES):
        bg = list(BACKGROUND_COLOURS)[i % len(BACKGROUND_COLOURS)]
        texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
        captions.append(f"{article(colour)} {colour} {shape} on a {bg} {texture} background")
    k = 0
    while len(captions) < 32:
        scene = sample_scene(eval_scene_seed(10_000 + seed, k))
        k += 1
        if len(scene.objects) == 2:
            captions.append(scene.caption)
    return captions


def captioned_objects(caption: str) -> list[tuple[str, str]]:
    """(colour, shape) of each object a caption names."""
    objects = caption.split(" on a ")[0].split(" and ")
    return [tuple(phrase.split()[1:3]) for phrase in objects]  # type: ignore[misc]


def colours_present(image: Image.Image, min_pixels: int = 20) -> set[str]:
    """Object colours with at least ``min_pixels`` pixels in the image."""
    is_obj, nearest = object_pixels(image)
    votes = np.bincount(nearest[is_obj], minlength=len(OBJECT_COLOURS))
    return {name for name, v in zip(OBJECT_COLOURS, votes, strict=True) if v >= min_pixels}


def is_flow_model(model_dir: str | Path) -> bool:
    """Whether ``model_dir``'s model_index.json names the rectified-flow scheduler."""
    return names_flow_scheduler(json.loads((Path(model_dir) / "model_index.json").read_text()))


def sample(model_dir: str | Path, captions: list[str], seed: int, steps: int, guidance: float) -> list[Any]:
    """Images drawn by the StableDiffusionPipeline of ``model_dir``, one per caption (a flow model's:
    ``sample_flow``)."""
    from diffusers import StableDiffusionPipeline

    if is_flow_model(model_dir):
        return sample_flow(model_dir, captions, seed, steps, guidance)

    pipe = StableDiffusionPipeline.from_pretrained(str(model_dir), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    gen = torch.Generator().manual_seed(seed)
    out = pipe(
        captions,
        height=size,
        width=size,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=gen,
    )
    return list(out.images)


@torch.inference_mode()
def sample_flow(
    model_dir: str | Path, captions: list[str], seed: int, steps: int, guidance: float
) -> list[Any]:
    """Images drawn by a flow-trained shapes model: Euler sampling with classifier-free guidance from
    x_1 ~ N(0, I) on the scheduler's flow grid, run as DiffEdit's decoding with an all-ones mask (the
    trajectory's other levels are then never read)."""
    from diffedit.decode import ddim_decode
    from diffedit.images import tensor_to_pil
    from diffedit.loading import load_bundle

    bundle = load_bundle(str(model_dir))
    levels = bundle.levels(steps)
    side = bundle.native_size // bundle.vae_scale_factor
    gen = torch.Generator().manual_seed(seed)
    x1 = torch.randn((len(captions), bundle.latent_channels, side, side), generator=gen)  # (B, C, h, w)
    cond = bundle.encode_prompts([*captions, ""])  # (B + 1, L, D)
    uncond = cond[-1:].expand(len(captions), -1, -1)  # (B, L, D)
    x0 = ddim_decode(
        bundle.denoise,
        [torch.zeros_like(x1)] * steps + [x1],
        torch.ones(len(captions), 1, side, side),
        levels,
        cond[:-1],
        uncond,
        torch.full((len(captions),), guidance),
        max_batch=64,
    )  # (B, C, h, w)
    return [tensor_to_pil(x) for x in bundle.vae_decode(x0)]


def check(captions: list[str], images: list[Image.Image]) -> list[dict[str, Any]]:
    """Per sample: does the classifier read back what the caption says?"""
    rows = []
    for caption, image in zip(captions, images, strict=True):
        objects = captioned_objects(caption)
        row: dict[str, Any] = {"caption": caption}
        if len(objects) == 1:
            colour, shape = classify_region(image, np.ones(image.size[::-1], dtype=bool))
            row.update(
                read=[colour, shape], colour_ok=colour == objects[0][0], shape_ok=shape == objects[0][1]
            )
        else:
            present = colours_present(image)
            row.update(read=sorted(present), colour_ok=present == {c for c, _ in objects})
        rows.append(row)
    return rows


def grid(
    images: list[Image.Image], captions: list[str], rows: list[dict[str, Any]], cols: int = 8
) -> Image.Image:
    """Samples at 2x with their captions (green: classifier agrees, red: it does not)."""
    tile, text_h = 128, 40
    n_rows = math.ceil(len(images) / cols)
    canvas = Image.new("RGB", (cols * tile, n_rows * (tile + text_h)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (image, caption, row) in enumerate(zip(images, captions, rows, strict=True)):
        x, y = (i % cols) * tile, (i // cols) * (tile + text_h)
        canvas.paste(image.resize((tile, tile), Image.NEAREST), (x, y))
        ok = row["colour_ok"] and row.get("shape_ok", True)
        text = caption.replace(" background", "")
        draw.multiline_text(
            (x + 2, y + tile + 1), "\n".join(textwrap.wrap(text, 21)), fill=(0, 110, 0) if ok else (190, 0, 0)
        )
    return canvas


@torch.no_grad()
def vae_psnr(model_dir: str | Path, n: int = 64, seed: int = 0) -> float:
    """Mean PSNR (dB, 0..255) of VAE reconstructions (posterior mode) of held-out scenes."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(model_dir), subfolder="vae").eval()
    scenes = [sample_scene(eval_scene_seed(20_000 + seed, k)) for k in range(n)]
    x = torch.from_numpy(np.stack([np.asarray(s.image) for s in scenes])).permute(0, 3, 1, 2)  # (n, 3, H, W)
    x = x.float() / 127.5 - 1
    r = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    a, b = ((x + 1) * 127.5).round(), ((r + 1) * 127.5).round()
    mse = ((a - b) ** 2).mean(dim=(1, 2, 3))  # (n,)
    return float((10 * torch.log10(255.0**2 / mse)).mean())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model_dir = Path(args.model_dir)
    flow = is_flow_model(model_dir)
    captions = check_captions(args.seed)
    images = sample(model_dir, captions, args.seed, args.steps, args.guidance)
    rows = check(captions, images)
    grid(images, captions, rows).save(model_dir / "samples.png")
    single = [r for r in rows if "shape_ok" in r]
    multi = [r for r in rows if "shape_ok" not in r]
    summary = {
        "sampler": f"{'Euler (flow)' if flow else 'DDIM'} {args.steps} steps, guidance {args.guidance}, seed {args.seed}",
        "single_object_colour_match": sum(r["colour_ok"] for r in single) / len(single),
        "single_object_shape_match": sum(r["shape_ok"] for r in single) / len(single),
        "single_object_both_match": sum(r["colour_ok"] and r["shape_ok"] for r in single) / len(single),
        "two_object_colour_set_match": sum(r["colour_ok"] for r in multi) / max(1, len(multi)),
        "all_colour_match": sum(r["colour_ok"] for r in rows) / len(rows),
        "vae_reconstruction_psnr_db": vae_psnr(model_dir),
        "samples": rows,
    }
    (model_dir / "sample_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "samples"}, indent=2))


if __name__ == "__main__":
    main()

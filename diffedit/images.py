"""Image conversion and the resolution policy: PIL in, model tensors, PIL out.

Resolution policy ("fit"): the image is scaled, keeping its aspect ratio, so that its longer side
equals the model's native size (``ModelBundle.native_size``: 512 for SD 1.5); each side is then
rounded to the nearest multiple of ``ModelBundle.pixel_multiple`` (64 for SD: the VAE stride times
the UNet's down-sampling), and is at least one multiple. The edit is computed at that resolution and
resized back to the input's original size (Lanczos for images, bilinear for soft masks, nearest for
binary masks).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

#: PIL modes ``to_rgb`` converts; anything else is refused with a clear error.
SUPPORTED_MODES = (
    "1",
    "L",
    "P",
    "RGB",
    "RGBA",
    "LA",
    "PA",
    "RGBX",
    "RGBa",
    "La",
    "CMYK",
    "YCbCr",
    "LAB",
    "HSV",
    "I",
    "I;16",
    "I;16B",
    "I;16L",
    "I;16N",
    "F",
)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any supported PIL mode -> RGB. Alpha is composited onto white. Deep images are rescaled by their
    type's range, never stretched per image (a uniform image stays uniform, a dark one stays dark):

    * 16-bit (``I;16*``): ``v / 257`` (65535 -> 255, 60000 -> 233);
    * 32-bit integer (``I``): Pillow opens 16-bit PNG/TIFF data as ``I`` too, so its values are read as
      16-bit, ``v / 257`` clipped to [0, 65535];
    * float (``F``): the [0, 1] convention, ``v * 255`` clipped (NaN -> 0)."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"image has zero size ({image.width}x{image.height})")
    mode = image.mode
    if mode not in SUPPORTED_MODES:
        raise ValueError(f"unsupported image mode {mode!r} (supported: {', '.join(SUPPORTED_MODES)})")
    if mode == "RGB":
        return image
    if mode in ("I", "F") or mode.startswith("I;16"):
        a = np.asarray(image, dtype=np.float64)  # (H, W)
        if mode == "F":
            a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=0.0).clip(0.0, 1.0) * 255.0
        else:
            a = a.clip(0.0, 65535.0) / 257.0
        return Image.fromarray(a.round().astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def model_resolution(width: int, height: int, native: int, multiple: int) -> tuple[int, int]:
    """(width, height) the model works at under the "fit" policy (module docstring)."""
    if width < 1 or height < 1:
        raise ValueError(f"image has zero size ({width}x{height})")
    scale = native / max(width, height)

    def side(v: int) -> int:
        return max(multiple, round(v * scale / multiple) * multiple)

    return side(width), side(height)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL -> (3, H, W) float32 in [-1, 1]."""
    a = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # (H, W, 3)
    return torch.from_numpy(a).permute(2, 0, 1).contiguous()  # (3, H, W)


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> RGB PIL."""
    a = ((x.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)  # (3, H, W)
    return Image.fromarray(a.permute(1, 2, 0).numpy(), "RGB")  # (H, W, 3)


def map_to_pil(m: torch.Tensor, size: tuple[int, int], *, binary: bool) -> Image.Image:
    """A (h, w) map in [0, 1] (or bool) -> "L" PIL at ``size`` (width, height); 0/255 when binary."""
    a = (m.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()  # (h, w)
    img = Image.fromarray(a, "L")
    return img.resize(size, Image.Resampling.NEAREST if binary else Image.Resampling.BILINEAR)

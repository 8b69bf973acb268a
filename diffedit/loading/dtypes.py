"""The dtype a model is loaded in."""

from __future__ import annotations

import torch

__all__ = ["resolve_dtype"]

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(device: str | torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """The torch dtype to load in on ``device``.

    ``None`` means float16 on CUDA and float32 elsewhere. Strings: "float32"/"fp32", "float16"/"fp16",
    "bfloat16"/"bf16" (an optional "torch." prefix is allowed). float16 on CPU is refused (bfloat16 is
    allowed): CPU float16 kernels are missing or slow and the result would differ from a GPU run.
    """
    device = torch.device(device)
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        name = dtype.strip().lower().removeprefix("torch.")
        if name not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}: expected one of {sorted(_DTYPES)}")
        resolved = _DTYPES[name]
    elif isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(
                f"unsupported dtype {dtype}: expected torch.float32, torch.float16 or torch.bfloat16"
            )
        resolved = dtype
    else:
        raise TypeError(f"dtype must be a string, a torch.dtype or None, got {type(dtype).__name__}")
    if resolved == torch.float16 and device.type == "cpu":
        raise ValueError(
            "float16 on CPU is refused (missing or very slow kernels): use float32 or bfloat16 on CPU"
        )
    return resolved

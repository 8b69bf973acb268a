"""DiffEdit parameters: one frozen, typed, strictly validated record.

Every default states its source. All of them can be overridden per call (``EditParams.replace``)
and per row (``EditRequest.params`` or the job manifest's override columns).

Paper: Couairon, Verbeek, Schwenk, Cord, "DiffEdit: Diffusion-based semantic image editing with
mask guidance", ICLR 2023, arXiv 2210.11427 (section numbers below refer to it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args, get_type_hints

from diffedit import strict

EncodeConditioning = Literal["unconditional", "caption"]
EncodeMethod = Literal["ddim", "noise"]
MaskCover = Literal["difference", "union"]
#: The largest closing / dilation radius, in latent cells.
MAX_MASK_RADIUS = 8


@dataclass(frozen=True)
class EditParams:
    # --- step 1, mask (paper §3.2 "Step 1: computing editing mask") ---
    num_mask_draws: int = 10  # n noise draws per mask; the paper uses n = 10
    mask_strength: float = 0.5  # noise strength of the draws, in (0, 1]; the paper: 50%, "≤ 0.6 works best"
    mask_threshold: float = 0.4  # binarisation threshold on the [0, 1] map. The paper: 0.5 (PAPER_MASK);
    #   0.4 won the mask study on models/shapes-v3 (benchmarks.quality.masks --edit, 100 tuning tasks,
    #   r 0.7) by the rule "best success with background within 1 dB of the paper's": 0.90 vs 0.82,
    #   -0.55 dB (0.3: 0.90 but -1.20 dB; smoothing 1 + fill holes: 0.88, -0.86 dB)
    mask_clip_quantile: float = 0.99  # "remove extreme values": clip the map at this per-image quantile
    mask_smoothing: float = 0.0  # Gaussian sigma in latent pixels applied before thresholding; 0 = none
    # Beyond the paper (diffedit/mask.py; PAPER_MASK below turns them all off):
    mask_cover: MaskCover = "difference"  # "difference": the paper's |eps_Q - eps_R| mask; "union": plus
    #   the objects (per-prompt relevance |eps_Q - eps_0|, |eps_R - eps_0|) that mask touches; 3n evals
    mask_union_threshold: float = 0.5  # threshold of the rescaled relevance maps of mask_cover="union"
    mask_closing: int = 0  # morphological closing radius in latent cells (square); 0 = none
    mask_fill_holes: bool = False  # fill holes of the binary mask (empty parts not reaching the border)
    mask_dilation: int = 0  # grow the binary mask by this many latent cells (square); 0 = none
    # --- step 2, encode (paper §3.2 "Step 2: encoding") ---
    num_inference_steps: int = (
        50  # DDIM steps over the whole [0, T] range; diffusers' and the paper's default
    )
    encode_ratio: float = 0.8  # r: how far DDIM encoding goes, in (0, 1]; diffusers' inpaint_strength default
    encode_conditioning: EncodeConditioning = "unconditional"  # the paper encodes unconditionally
    encode_method: EncodeMethod = (
        "ddim"  # "ddim" inversion (the paper); "noise" = SDEdit's forward noising, a baseline
    )
    # --- step 3, decode (paper §3.2 "Step 3: decoding with mask guidance") ---
    guidance_scale: float = 7.5  # classifier-free guidance; the paper uses 7.5 on Stable Diffusion
    negative_prompt: str = ""  # the unconditional prompt of classifier-free guidance
    # --- output ---
    paste_background: bool = False  # put the input's own pixels back outside the mask (edges feathered over
    #   one latent pixel); off = the paper: outside the mask the output is the VAE's reconstruction

    def __post_init__(self) -> None:
        problems = []
        if self.num_mask_draws < 1:
            problems.append(f"num_mask_draws must be >= 1, got {self.num_mask_draws}")
        if not 0.0 < self.mask_strength <= 1.0:
            problems.append(f"mask_strength must be in (0, 1], got {self.mask_strength}")
        if not 0.0 <= self.mask_threshold <= 1.0:
            problems.append(f"mask_threshold must be in [0, 1], got {self.mask_threshold}")
        if not 0.5 <= self.mask_clip_quantile <= 1.0:
            problems.append(f"mask_clip_quantile must be in [0.5, 1], got {self.mask_clip_quantile}")
        if self.mask_smoothing < 0.0 or not math.isfinite(self.mask_smoothing):
            problems.append(f"mask_smoothing must be a finite value >= 0, got {self.mask_smoothing}")
        if self.mask_cover not in get_args(MaskCover):
            problems.append(f"mask_cover must be one of {get_args(MaskCover)}, got {self.mask_cover!r}")
        if not 0.0 <= self.mask_union_threshold <= 1.0:
            problems.append(f"mask_union_threshold must be in [0, 1], got {self.mask_union_threshold}")
        for name in ("mask_closing", "mask_dilation"):
            if not 0 <= getattr(self, name) <= MAX_MASK_RADIUS:
                problems.append(f"{name} must be in [0, {MAX_MASK_RADIUS}], got {getattr(self, name)}")
        if self.num_inference_steps < 1:
            problems.append(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if not 0.0 < self.encode_ratio <= 1.0:
            problems.append(f"encode_ratio must be in (0, 1], got {self.encode_ratio}")
        if self.encode_conditioning not in get_args(EncodeConditioning):
            problems.append(
                f"encode_conditioning must be one of {get_args(EncodeConditioning)}, got {self.encode_conditioning!r}"
            )
        if self.encode_method not in get_args(EncodeMethod):
            problems.append(
                f"encode_method must be one of {get_args(EncodeMethod)}, got {self.encode_method!r}"
            )
        if self.guidance_scale < 0.0 or not math.isfinite(self.guidance_scale):
            problems.append(f"guidance_scale must be a finite value >= 0, got {self.guidance_scale}")
        if problems:
            raise ValueError("invalid DiffEdit parameters: " + "; ".join(problems))

    @property
    def num_encode_steps(self) -> int:
        """K, the number of DDIM steps between the clean latent and the encoded one (>= 1)."""
        return max(1, int(self.num_inference_steps * self.encode_ratio))

    def replace(self, **overrides: Any) -> EditParams:
        """A copy with ``overrides`` applied, each checked like ``from_dict`` does."""
        return EditParams.from_dict({**self.to_dict(), **overrides}, source="overrides")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, source: str = "<dict>", base: EditParams | None = None
    ) -> EditParams:
        """Strict construction: an unknown key or a wrong type is an error naming the key and ``source``.

        Keys missing from ``data`` take their value from ``base`` (or the defaults). Integers are accepted
        for float fields; booleans are never accepted as numbers.
        """
        hints = get_type_hints(cls)
        known = set(cls.field_names())
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown DiffEdit parameter(s) {unknown}; known: {sorted(known)}")
        values = (base or cls()).to_dict()
        for key, value in data.items():
            values[key] = strict.coerce(value, hints[key], f"{source}: {key}")  # the one coercion
        try:
            return cls(**values)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None


#: The paper's mask recipe (§3.2 step 1: n = 10 draws at strength 50%, extremes removed, rescaled,
#: binarised at 0.5), with every option beyond it off. ``EditParams().replace(**PAPER_MASK)``, or the
#: job preset ``masks/paper`` (configs/masks/paper.yaml), gives paper-faithful masks.
PAPER_MASK: dict[str, Any] = {
    "num_mask_draws": 10,
    "mask_strength": 0.5,
    "mask_threshold": 0.5,
    "mask_clip_quantile": 0.99,
    "mask_smoothing": 0.0,
    "mask_cover": "difference",
    "mask_union_threshold": 0.5,
    "mask_closing": 0,
    "mask_fill_holes": False,
    "mask_dilation": 0,
}

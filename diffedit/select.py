"""Best-of-K selection: K candidate edits of one row, the best kept by a weighted sum of its scores.

Candidate k of a row with seed S edits with seed

    S_0 = S,    S_k = sha256(f"{S}:candidate:{k}")[:8] (little endian) & (2**63 - 1)   for k >= 1

so K = 1 is the plain edit, candidates are the same on every machine and in every batch, and a row's
candidates never depend on its batch-mates. Candidates may also differ in parameters, as
InstructPix2Pix's candidates differ in their prompt-to-prompt threshold and guidance: with ``variants``
(V parameter overrides), candidate k >= 1 edits with the row's parameters and variant (k - 1) mod V;
candidate 0 is always the plain edit. A variant may change the mask and the decoding only
(``VARIANT_KEYS``), so the candidates still share the inversion. The seed drives the mask's noise draws (step 1); with DDIM
inversion the encode (step 2) and the VAE encode do not depend on it, so the candidates share them
(``DiffEditor``): K candidates cost 1 VAE encode, 1 inversion, K masks, K decodes and K VAE decodes.

The chosen candidate maximises  sum_name weight[name] * score_name  (``Selection.by``); a candidate
whose weighted scores include a null (a score that could not be computed) ranks below every other,
and ties go to the lowest k (the plain edit first).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from diffedit.scores import SCORE_NAMES

MAX_SEED = 2**63 - 1
#: The parameters a candidate variant may change: step 1 (the mask) and step 3 (the decoding).
VARIANT_KEYS = frozenset(
    {"num_mask_draws", "mask_strength", "mask_threshold", "mask_clip_quantile", "mask_smoothing",
     "mask_cover", "mask_union_threshold", "mask_closing", "mask_fill_holes", "mask_dilation",
     "guidance_scale", "negative_prompt", "paste_background"}
)  # fmt: skip


@dataclass(frozen=True)
class Selection:
    """``candidates`` edits per row, the best by ``by`` (score name -> weight; higher sum wins);
    ``variants``: parameter overrides of candidates 1, 2, ... in turn (module docstring)."""

    candidates: int = 1
    by: Mapping[str, float] = field(default_factory=lambda: {"alignment": 1.0})
    variants: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        problems = []
        if self.candidates < 1:
            problems.append(f"candidates must be >= 1, got {self.candidates}")
        if not self.by:
            problems.append("by must name at least one score")
        unknown = sorted(set(self.by) - set(SCORE_NAMES))
        if unknown:
            problems.append(f"by names unknown score(s) {unknown}, known: {list(SCORE_NAMES)}")
        if any(not math.isfinite(w) for w in self.by.values()):
            problems.append(f"by's weights must be finite numbers, got {dict(self.by)}")
        for i, variant in enumerate(self.variants):
            bad = sorted(set(variant) - VARIANT_KEYS)
            if bad:
                problems.append(
                    f"variants[{i}] changes {bad}, which may not vary between candidates (they share the "
                    f"inversion): a variant may change only {sorted(VARIANT_KEYS)}"
                )
        if problems:
            raise ValueError("invalid selection: " + "; ".join(problems))


def candidate_seed(seed: int, k: int) -> int:
    """The seed of candidate ``k`` of a row seeded ``seed`` (see the module docstring)."""
    if k == 0:
        return int(seed)
    digest = hashlib.sha256(f"{int(seed)}:candidate:{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & MAX_SEED


def candidate_params(params: Any, variants: Sequence[Mapping[str, Any]], k: int) -> Any:
    """The ``EditParams`` of candidate ``k``: ``params``, with variant (k - 1) mod V for k >= 1."""
    if k == 0 or not variants:
        return params
    return params.replace(**variants[(k - 1) % len(variants)])


def objective(scores: Mapping[str, float | None], by: Mapping[str, float]) -> float:
    """sum_name by[name] * scores[name]; -inf when a weighted score is null or not finite."""
    total = 0.0
    for name, weight in by.items():
        value = scores.get(name)
        if value is None or not math.isfinite(value):
            return -math.inf
        total += weight * value
    return total


def choose(candidates: Sequence[Mapping[str, float | None]], by: Mapping[str, float]) -> int:
    """The index of the best candidate by ``objective`` (the lowest index among equals)."""
    values = [objective(c, by) for c in candidates]
    return max(range(len(values)), key=lambda i: (values[i], -i))


def unet_evals_per_row(
    params: Any, scoring: Any, candidates: int, variants: Sequence[Mapping[str, Any]] = ()
) -> dict[str, int]:
    """The UNet evaluations of one row edited with ``params`` (``EditParams``), ``scoring`` (a
    ``diffedit.scores.Scoring`` or None) and K = ``candidates``, by stage and in all ("total"): per
    candidate 2n mask draws (3n with ``mask_cover="union"``) and 2 per decoding step (1 at guidance 1);
    once per row the DDIM inversion (1 per encoding step; candidates share it, ``encode_method="noise"``
    needs none) and the input's alignment score; per candidate its own alignment score. A row whose
    texts are the same tokens costs no mask evaluation, and a given mask none (not counted here)."""
    k = candidates
    steps = params.num_encode_steps
    each = [candidate_params(params, variants, c) for c in range(k)]
    mask = sum((3 if p.mask_cover == "union" else 2) * p.num_mask_draws for p in each)
    encode = steps if params.encode_method == "ddim" else 0
    decode = sum((1 if p.guidance_scale == 1.0 else 2) * steps for p in each)
    score = scoring.alignment_evals * (1 + k) if scoring is not None else 0
    return {"mask": mask, "encode": encode, "decode": decode, "score": score,
            "total": mask + encode + decode + score}  # fmt: skip

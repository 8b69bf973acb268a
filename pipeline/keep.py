"""The ``filter`` of a job: which ok rows a dataset keeps, and why the others are rejected.

A row is kept when it is ``ok`` and every score the filter names is present and within its bounds
(``filter.min``: score >= bound; ``filter.max``: score <= bound). A rejected row stays in the output
with ``keep`` false and a ``reject_reason`` naming each failed bound in the filter's order (min bounds,
then max bounds): ``score_alignment 0.12 < min 0.5; score_mask_components 4 > max 3``. A failed row
is never kept (reason ``failed``); a score that is null (switched off, or undefined for the row, such
as the preservation of a mask covering the whole image) fails its bound (``score_ssim null``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.config import FilterConfig
from pipeline.rows import OK


def keep_verdict(row: Mapping[str, Any], rule: FilterConfig) -> tuple[bool, str | None]:
    """(keep, reject_reason) of one row (a mapping with ``status`` and ``score_*`` keys)."""
    if row.get("status") != OK:
        return False, "failed"
    reasons = []
    for name, bound in rule.min.items():
        value = row.get(f"score_{name}")
        if value is None:
            reasons.append(f"score_{name} null")
        elif value < bound:
            reasons.append(f"score_{name} {value:.4g} < min {bound:g}")
    for name, bound in rule.max.items():
        value = row.get(f"score_{name}")
        if value is None:
            reasons.append(f"score_{name} null")
        elif value > bound:
            reasons.append(f"score_{name} {value:.4g} > max {bound:g}")
    return (not reasons), ("; ".join(reasons) or None)

"""Per-row cost limits (``limits`` in the job): a manifest row may override DiffEdit's parameters, and a
row asking for 100,000 steps would hold a model actor for hours. Such a row fails, with an error that
names the limit key; the job's own ``params`` are checked against the same limits when it is loaded.
"""

from __future__ import annotations

from typing import Any

from diffedit.params import EditParams


class LimitError(ValueError):
    """A row (or the job's params) asks for more than a ``limits.*`` key allows."""


def unet_evals_bound(params: EditParams) -> int:
    """An upper bound of the UNet samples one edit costs: 2 per mask draw (query and reference), 1 per
    encoding step, 2 per decoding step (classifier-free guidance: conditional and unconditional)."""
    return 2 * params.num_mask_draws + 3 * params.num_encode_steps


def check_limits(params: EditParams, limits: Any, texts: dict[str, str | None] | None = None) -> None:
    """Raise ``LimitError`` when ``params`` (or one of ``texts``: caption, query) exceeds ``limits``
    (a ``pipeline.config.LimitsConfig``)."""
    problems = []
    if params.num_inference_steps > limits.max_inference_steps:
        problems.append(
            f"num_inference_steps {params.num_inference_steps} is above limits.max_inference_steps = "
            f"{limits.max_inference_steps}"
        )
    if params.num_mask_draws > limits.max_mask_draws:
        problems.append(
            f"num_mask_draws {params.num_mask_draws} is above limits.max_mask_draws = {limits.max_mask_draws}"
        )
    evals = unet_evals_bound(params)
    if evals > limits.max_unet_evals:
        problems.append(
            f"the edit would cost up to {evals} UNet evaluations (2 x num_mask_draws + 3 x encoding steps), "
            f"above limits.max_unet_evals = {limits.max_unet_evals}"
        )
    for name, text in {"negative_prompt": params.negative_prompt, **(texts or {})}.items():
        if text is not None and len(text) > limits.max_prompt_chars:
            problems.append(
                f"{name} has {len(text)} characters, above limits.max_prompt_chars = {limits.max_prompt_chars}"
            )
    if problems:
        raise LimitError("over a job limit: " + "; ".join(problems))


__all__ = ["LimitError", "check_limits", "unet_evals_bound"]

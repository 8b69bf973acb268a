"""The bundled shapes model re-expressed as a flow model: the flow path must reproduce the DDIM path.

    python -m benchmarks.quality.flow_reexpress --tasks 200 --out out/flow-reexpress

A VP model x = a x_0 + b eps (a^2 + b^2 = 1) is a rectified-flow model in the rescaled latent
x_f = x / (a + b) = (1 - s) x_0 + s eps with s = b / (a + b) (flow-models notes: the same solver in
other coordinates). ``FlowReexpressed`` wraps a ``ModelBundle`` so that the stages see a velocity
model on a flow grid:

* levels: the DDIM grid's levels with alpha = a / (a + b), sigma = s (the same timesteps, the same
  index rule for the mask level, ``Levels.kind`` "ddim");
* denoise: the UNet's eps on x_vp = x_f / sqrt(alpha^2 + sigma^2) (the VP latent of the same level),
  turned into the velocity v = eps - x0-hat, and read back by ``modelcall.from_velocity`` — the flow
  code path, not the eps one.

Every latent of the flow path is then the DDIM path's latent times 1 / (a + b) at its level, and the
clean ends (the edits) are equal up to float rounding. Printed: the largest latent and pixel
differences between the two paths over ``--tasks`` held-out tasks (stream 0), and the strict judge's
success and clean rates for each, with the number of tasks whose verdicts differ.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffedit.modelcall import Prediction, from_velocity
from diffedit.schedule import Levels


class FlowReexpressed:
    """A ``ModelBundle`` presented as a velocity model on a flow grid (module docstring); every other
    attribute is the bundle's."""

    def __init__(self, bundle: Any) -> None:
        self.bundle = bundle
        self.family = f"{bundle.family}-as-flow"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bundle, name)

    def levels(self, num_steps: int, latent_hw: tuple[int, int] | None = None) -> Levels:
        vp = self.bundle.levels(num_steps, latent_hw)
        a, b = vp.alpha.double(), vp.sigma.double()  # (S + 1,) in float64: no rounding added to the grid
        return Levels(t=vp.t, alpha=a / (a + b), sigma=b / (a + b), kind=vp.kind)

    def denoise(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        alpha: torch.Tensor,
        sigma: torch.Tensor,
    ) -> Prediction:
        norm = (alpha.double() ** 2 + sigma.double() ** 2).sqrt()  # (B,) = 1 / (a + b)
        a, b = alpha.double() / norm, sigma.double() / norm  # (B,) the VP level
        x_vp = latents / norm.to(latents.dtype).view(-1, 1, 1, 1)  # (B, C, h, w)
        vp = self.bundle.denoise(x_vp, t, cond, a, b)  # the VP model's own (x0-hat, eps-hat)
        return from_velocity(latents, vp.eps - vp.x0, sigma)  # v = eps - x0


def compare(bundle: Any, tasks: Sequence[Any], params: Any, max_batch: int = 64) -> dict[str, Any]:
    """Edit ``tasks`` on the DDIM path and on the re-expressed flow path; differences and verdicts."""
    from diffedit.editor import DiffEditor, EditRequest
    from diffedit.shapes.judge import judge

    requests = [
        EditRequest(image=t.image, query=t.query, caption=t.caption, seed=int(t.seed), id=t.id) for t in tasks
    ]
    ddim = DiffEditor(bundle, params, max_batch=max_batch).edit(requests)
    flow = DiffEditor(FlowReexpressed(bundle), params, max_batch=max_batch).edit(requests)
    latent = max(float((a.latent - b.latent).abs().max()) for a, b in zip(ddim, flow, strict=True))
    pixels = [
        int(np.abs(np.asarray(a.image, np.int16) - np.asarray(b.image, np.int16)).max())
        for a, b in zip(ddim, flow, strict=True)
    ]
    masks = sum(
        not np.array_equal(a.mask_binary_latent, b.mask_binary_latent)
        for a, b in zip(ddim, flow, strict=True)
    )
    vd = [judge(t, r.image) for t, r in zip(tasks, ddim, strict=True)]
    vf = [judge(t, r.image) for t, r in zip(tasks, flow, strict=True)]
    return {
        "tasks": len(tasks),
        "max_latent_difference": latent,
        "max_pixel_difference": max(pixels),
        "pixels_differing_tasks": sum(p > 0 for p in pixels),
        "mask_differing_tasks": int(masks),
        "ddim_success": float(np.mean([v.success for v in vd])),
        "flow_success": float(np.mean([v.success for v in vf])),
        "ddim_clean": float(np.mean([v.clean for v in vd])),
        "flow_clean": float(np.mean([v.clean for v in vf])),
        "verdicts_differing": sum(
            (a.success, a.clean) != (b.success, b.clean) for a, b in zip(vd, vf, strict=True)
        ),
        "unet_evals_per_edit": (ddim[0].counters["unet_evals"], flow[0].counters["unet_evals"]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.quality.preset import preset_params
    from diffedit.loading import load_bundle
    from diffedit.shapes.scenes import make_edit_tasks

    p = argparse.ArgumentParser(
        prog="python -m benchmarks.quality.flow_reexpress", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", default="models/shapes-v3")
    p.add_argument("--preset", default="configs/models/shapes-v3.yaml")
    p.add_argument("--seed", type=int, default=0, help="task stream (0: the held-out one)")
    p.add_argument("--tasks", type=int, default=200)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    result = compare(
        load_bundle(args.model), make_edit_tasks(args.seed, args.tasks), preset_params(args.preset)
    )
    lines = [f"{k}: {v}" for k, v in result.items()]
    print("\n".join(lines))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "flow_reexpress.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

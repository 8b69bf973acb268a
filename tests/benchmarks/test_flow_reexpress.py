"""A VP model re-expressed as a velocity model on a flow grid (benchmarks.quality.flow_reexpress) edits
exactly as the DDIM path: the flow code path (from_velocity, flow-coordinate latents) is the DDIM
solver in other coordinates. Tolerances: 1e-5 on latents in float64 (the DDIM grid's float32 a and b
satisfy a^2 + b^2 = 1 only to ~1e-7, which the flow path's rescaling inherits); on the bundled model in float32,
latents within 1e-3 and pixels within 2/255, the same masks and the same strict verdicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmarks.quality.flow_reexpress import FlowReexpressed, compare
from benchmarks.quality.preset import preset_params
from diffedit.editor import DiffEditor, EditRequest
from diffedit.params import EditParams
from diffedit.tiny import tiny_bundle


def test_flow_grid_is_the_ddim_grid_in_rescaled_coordinates():
    vp = tiny_bundle(seed=0)
    flow = FlowReexpressed(vp)
    a, f = vp.levels(20), flow.levels(20)
    assert torch.equal(a.t, f.t) and f.alpha[0] == 1 and f.sigma[0] == 0
    torch.testing.assert_close(f.alpha + f.sigma, torch.ones(21, dtype=torch.float64))
    torch.testing.assert_close(
        f.sigma / f.alpha, (a.sigma / a.alpha).double()
    )  # the same signal-to-noise ratios


def test_reexpressed_tiny_model_edits_exactly_as_ddim_in_float64():
    bundle = tiny_bundle(seed=0, dtype=torch.float64)
    rng = np.random.default_rng(0)
    from PIL import Image

    image = Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8))
    params = EditParams(num_inference_steps=10, num_mask_draws=3)
    request = [EditRequest(image, "a red cat", "a blue cat", seed=3)]
    ddim = DiffEditor(bundle, params).edit(request)[0]
    flow = DiffEditor(FlowReexpressed(bundle), params).edit(request)[0]
    torch.testing.assert_close(flow.latent, ddim.latent, rtol=0, atol=1e-5)
    assert np.array_equal(flow.mask_binary_latent, ddim.mask_binary_latent)
    assert flow.counters["unet_evals"] == ddim.counters["unet_evals"]


def test_reexpressed_shapes_model_reproduces_the_ddim_edits_and_verdicts(torch_threads):
    from diffedit.loading import load_bundle
    from diffedit.shapes.scenes import make_edit_tasks

    torch_threads(1)
    result = compare(
        load_bundle("models/shapes-v3"),
        make_edit_tasks(0, 6),
        preset_params(Path("configs/models/shapes-v3.yaml")),
    )
    assert result["max_latent_difference"] < 1e-3 and result["max_pixel_difference"] <= 2
    assert result["mask_differing_tasks"] == 0 and result["verdicts_differing"] == 0
    assert result["ddim_success"] == result["flow_success"]

"""A UNet trained with the rectified-flow objective (a FlowMatchEulerDiscreteScheduler in an SD layout) runs
DiffEdit on the flow path of ``ModelBundle``: its decoding with an all-ones mask is diffusers'
FlowMatchEulerDiscreteScheduler sampling (Euler steps on the same sigmas, classifier-free guidance on the
velocity) from the same x_1, and its evaluations are counted as on any model."""

from __future__ import annotations

import pytest
import torch

from diffedit.bundle import ModelBundle
from diffedit.decode import ddim_decode
from diffedit.editor import DiffEditor, EditRequest
from diffedit.params import EditParams
from diffedit.tiny import tiny_components

FLOW_CONFIG = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 2.0}


@pytest.fixture(scope="module")
def flow_unet() -> ModelBundle:
    parts = tiny_components(seed=3)
    parts["scheduler_config"] = dict(FLOW_CONFIG)
    return ModelBundle(**parts, source="tiny-flow-unet")


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_decoding_with_an_all_ones_mask_is_flow_match_euler_sampling(flow_unet, guidance):
    from diffusers import FlowMatchEulerDiscreteScheduler

    steps = 6
    x1 = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    cond = flow_unet.encode_prompts(["a red circle", ""])  # (2, L, D)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(FLOW_CONFIG)
    scheduler.set_timesteps(steps)
    x = x1.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            if guidance == 1.0:
                v = flow_unet.unet(x, t, encoder_hidden_states=cond[:1]).sample
            else:
                vc, vu = flow_unet.unet(torch.cat([x, x]), t, encoder_hidden_states=cond).sample.chunk(2)
                v = vu + guidance * (vc - vu)
            x = scheduler.step(v, t, x).prev_sample
    evals = torch.zeros(1, dtype=torch.int64)
    ours = ddim_decode(
        flow_unet.denoise,
        [torch.zeros_like(x1)] * steps + [x1],
        torch.ones(1, 1, 16, 16),
        flow_unet.levels(steps),
        cond[:1],
        cond[1:],
        torch.tensor([guidance]),
        max_batch=8,
        evals=evals,
    )
    assert int(evals) == (2 if guidance != 1 else 1) * steps
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-5)


def test_flow_unet_edits_are_batch_invariant_and_counted():
    """A row's edit alone equals its edit among rows of other prompts and chunkings (float64); each row's
    evaluations are what a hook on the UNet sees; the defaults cost 140 evaluations, as on the DDIM path
    (mask 2 x 10 at s ~ 0.5, encode 40, decode 80)."""
    import numpy as np
    from PIL import Image

    parts = tiny_components(seed=3)
    parts["scheduler_config"] = dict(FLOW_CONFIG)
    for name in ("unet", "vae", "text_encoder"):
        parts[name].to(torch.float64)
    bundle = ModelBundle(**parts, source="tiny-flow-unet-f64")
    params = EditParams(num_inference_steps=8, num_mask_draws=2, guidance_scale=2.0)
    images = [Image.new("RGB", (32, 32), c) for c in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    target = EditRequest(images[0], "a red circle", "a blue circle", seed=7)
    others = [
        EditRequest(images[1], "a green star", "a star", seed=1),
        EditRequest(images[2], "a black square", "", seed=2, params=params.replace(guidance_scale=1.0)),
    ]
    alone = DiffEditor(bundle, params=params, max_batch=64).edit([target])[0]
    seen: list[int] = []
    handle = bundle.unet.register_forward_hook(lambda m, args, out: seen.append(int(args[0].shape[0])))
    try:
        batch = DiffEditor(bundle, params=params, max_batch=3).edit([others[0], target, others[1]])
    finally:
        handle.remove()
    assert sum(seen) == sum(r.counters["unet_evals"] for r in batch)
    assert np.array_equal(np.asarray(alone.image), np.asarray(batch[1].image))
    torch.testing.assert_close(alone.latent, batch[1].latent, rtol=0, atol=1e-9)
    assert np.array_equal(alone.mask_binary_latent, batch[1].mask_binary_latent)
    assert DiffEditor(bundle, max_batch=64).edit([target])[0].counters["unet_evals"] == 140


def test_layout_names_a_flow_unet_and_refuses_a_flow_transformer_with_a_vp_scheduler(tmp_path):
    """validate's layout name says "rectified-flow UNet" for an SD directory with the flow scheduler; an
    SD3 or FLUX directory naming another scheduler is refused (its transformer predicts a velocity)."""
    import json

    from diffedit.loading.errors import ModelLayoutError
    from diffedit.loading.layout import check_layout, layout_name
    from diffedit.tiny import save_tiny_family

    sd = {"_class_name": "StableDiffusionPipeline", "scheduler": ["diffusers", "DDIMScheduler"]}
    assert layout_name(sd) == "Stable Diffusion"
    assert layout_name({**sd, "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}) == (
        "Stable Diffusion, rectified-flow UNet"
    )
    root = save_tiny_family("sd3", tmp_path / "sd3")
    index = json.loads((root / "model_index.json").read_text())
    assert layout_name(index) == "Stable Diffusion 3"
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}

    def read(rel: str):
        return json.loads((root / rel).read_text())

    check_layout(files, read, "sd3")  # as written: accepted
    (root / "model_index.json").write_text(json.dumps({**index, "scheduler": ["diffusers", "DDIMScheduler"]}))
    with pytest.raises(
        ModelLayoutError, match="scheduler is DDIMScheduler, expected FlowMatchEulerDiscreteScheduler"
    ):
        check_layout(files, read, "sd3")

"""torch.compile of the UNet (diffedit.compiled.CompiledUNet): one graph for every batch composition,
the same predictions as the eager UNet, and the bundle option that installs it.

Compiled with dynamo's "eager" backend: the graphs and guards (what decides a recompile) are dynamo's
whatever the backend, and the test then costs seconds instead of inductor's minutes of C++ builds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffedit.compiled import CompiledUNet
from diffedit.editor import DiffEditor
from diffedit.params import EditParams
from diffedit.tiny import tiny_bundle

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _inputs(bundle, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 8, 8, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    emb = bundle.encode_prompts(["a red circle", "a blue square"])[torch.arange(n) % 2]
    return x, t, emb


def test_batch_sizes_share_one_graph_and_match_eager():
    bundle = tiny_bundle(seed=0)
    compiled = CompiledUNet(bundle.unet, backend="eager")
    with torch.inference_mode():
        for n in (4, 7, 1, 2, 15, 3):  # call_denoiser's chunks and remainders, and a lone sample
            x, t, emb = _inputs(bundle, n, seed=n)
            got = compiled(x, t, encoder_hidden_states=emb).sample
            want = bundle.unet(x, t, encoder_hidden_states=emb).sample
            assert got.shape == want.shape == (n, 4, 8, 8)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert compiled.compiles == 1


def test_plain_compile_recompiles_per_batch_size():
    """The defect CompiledUNet avoids: torch.compile specialises on the first batch size, then on 1."""
    bundle = tiny_bundle(seed=0)
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    plain = torch.compile(bundle.unet, backend=counting)
    with torch.inference_mode():
        for n in (4, 7, 1):
            x, t, emb = _inputs(bundle, n)
            plain(x, t, encoder_hidden_states=emb)
    assert len(graphs) >= 2


def test_bundle_optimize_compiles_and_edits_like_eager():
    eager, compiled = tiny_bundle(seed=0), tiny_bundle(seed=0).optimize(compile_unet=True)
    assert isinstance(compiled.unet, CompiledUNet)
    compiled.unet = CompiledUNet(compiled.unet.unet, backend="eager")  # the same wrapper, no C++ build
    assert compiled.native_size == eager.native_size and compiled.dtype == torch.float32
    params = EditParams(num_inference_steps=4, num_mask_draws=2)
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    args = ([image, image], ["a blue circle", "a green circle"], ["a red circle"] * 2)
    a = DiffEditor(eager, params, max_batch=3).edit_images(*args, seeds=[5, 6])
    b = DiffEditor(compiled, params, max_batch=3).edit_images(*args, seeds=[5, 6])
    for ra, rb in zip(a, b, strict=True):
        diff = np.asarray(ra.image, dtype=np.int16) - np.asarray(rb.image, dtype=np.int16)
        assert np.abs(diff).max() <= 1  # 8-bit pixels, float tolerance
        assert ra.counters["unet_evals"] == rb.counters["unet_evals"]
    assert compiled.unet.compiles == 1  # calls of 3 samples and remainders of 1 and 2: one graph


def test_channels_last_predicts_like_contiguous():
    """NHWC convolutions: other kernels, the same predictions to float tolerance (a DiffEdit mask is
    a threshold, so whole edits are compared in the precision benchmark, not here)."""
    eager, nhwc = tiny_bundle(seed=0), tiny_bundle(seed=0).optimize(channels_last=True)
    assert nhwc.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert nhwc.vae.decoder.conv_out.weight.is_contiguous(memory_format=torch.channels_last)
    x, t, emb = _inputs(eager, 5)
    torch.testing.assert_close(nhwc.eps(x, t, emb), eager.eps(x, t, emb), rtol=1e-4, atol=1e-5)
    z = eager.vae_encode(torch.rand(2, 3, 32, 32) * 2 - 1)
    torch.testing.assert_close(nhwc.vae_decode(z), eager.vae_decode(z), rtol=1e-4, atol=1e-4)


def test_static_mode_pads_to_a_few_sizes_and_bounds_the_graphs_loudly(caplog):
    """The GPU path's static shapes (here with the eager backend, which compiles the same graphs): batches
    padded to 1, 2, 4, 8 compile once per padded size, give the eager results, and a shape beyond
    ``max_graphs`` runs eager with a warning instead of recompiling (or falling back silently)."""
    from diffedit.compiled import CompiledUNet, padded_sizes
    from diffedit.tiny import tiny_bundle

    assert padded_sizes(8) == (1, 2, 4, 8) and padded_sizes(12) == (1, 2, 4, 8, 12)
    unet = tiny_bundle(seed=0).unet
    compiled = CompiledUNet(unet, backend="eager", static_batches=padded_sizes(8), max_graphs=3)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(8, 16, 32, generator=g)
    with torch.inference_mode():
        for n in (3, 4, 2, 5, 7, 8):  # padded to 4, 4, 2, 8, 8, 8: three graphs
            x, t = torch.randn(n, 4, 16, 16, generator=g), torch.full((n,), 500)
            ours = compiled(x, t, encoder_hidden_states=emb[:n]).sample
            assert ours.shape[0] == n
            torch.testing.assert_close(
                ours, unet(x, t, encoder_hidden_states=emb[:n]).sample, rtol=1e-4, atol=1e-5
            )
        assert compiled.compiles == 3
        with caplog.at_level("WARNING", logger="diffedit.compiled"):
            x = torch.randn(1, 4, 16, 16, generator=g)  # a fourth size: beyond the bound
            out = compiled(x, torch.full((1,), 500), encoder_hidden_states=emb[:1]).sample
        torch.testing.assert_close(out, unet(x, torch.full((1,), 500), encoder_hidden_states=emb[:1]).sample)
    assert compiled.compiles == 3
    assert any("the bound (max_graphs); this shape runs eager" in r.getMessage() for r in caplog.records)

"""The diffusion phase's training data: edit pairs of training scenes, object cells, and the edit-pair
objective's inputs and targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffedit.shapes import dataset
from diffedit.shapes.scenes import N_OBJECT_PROBS, TRAIN_SEEDS, sample_scene, train_edit_pair


def test_train_edit_pairs_are_deterministic_edits_of_training_scenes() -> None:
    pairs = [train_edit_pair(s) for s in range(3_000_000, 3_000_060)]
    again = [train_edit_pair(s) for s in range(3_000_000, 3_000_060)]
    assert [p.id for p in pairs] == [p.id for p in again] and len({p.id for p in pairs}) == 60
    kinds = [p.kind for p in pairs]
    assert 15 < kinds.count("recolor") < 45  # p_recolor 0.5 by default
    for p in pairs:
        assert p.seed in TRAIN_SEEDS and p.caption == sample_scene(p.seed).caption and p.query != p.caption
        assert np.array_equal(p.region, p.object_mask_before | p.object_mask_after)
        before, after = np.asarray(p.image), np.asarray(p.target_image)
        assert (before[~p.region] == after[~p.region]).all() and (before[p.region] != after[p.region]).any()
    assert all(train_edit_pair(s, p_recolor=1.0).kind == "recolor" for s in range(40))
    assert all(len(train_edit_pair(s, n_objects=3).others) == 2 for s in range(10))
    with pytest.raises(ValueError, match="not a training seed"):
        train_edit_pair(TRAIN_SEEDS.stop)


def test_object_counts_follow_the_asked_mix_and_the_default_is_the_scenes_own() -> None:
    seeds = range(4000)
    assert dataset.object_counts(seeds[:5], None) == [None] * 5
    assert dataset.object_counts(seeds[:5], N_OBJECT_PROBS) == [None] * 5
    counts = dataset.object_counts(seeds, (0.1, 0.2, 0.7))
    assert counts == dataset.object_counts(seeds, (0.1, 0.2, 0.7))  # seeded by the scene seed
    share = np.bincount(counts, minlength=4)[1:] / len(counts)
    assert np.allclose(share, (0.1, 0.2, 0.7), atol=0.03)
    with pytest.raises(ValueError, match="summing to 1"):
        dataset.object_counts(seeds, (0.5, 0.6, 0.0))


def test_cell_fraction_is_the_cover_of_each_4x4_cell() -> None:
    m = np.zeros((8, 8), bool)
    m[:4, :4] = True  # one whole cell
    m[4, 4] = True  # one pixel of another
    frac = dataset.cell_fraction([m])
    assert frac.shape == (1, 1, 2, 2)
    assert frac[0, 0].tolist() == [[1.0, 0.0], [0.0, 1 / 16]]


def test_edit_pair_target_denoises_the_source_region_into_the_edit() -> None:
    g = torch.Generator().manual_seed(0)
    src, tgt, noise = (torch.randn(3, 4, 16, 16, generator=g) for _ in range(3))
    tgt[:, :, 8:] = src[:, :, 8:]  # the edit touches the top half only
    region = torch.zeros(3, 1, 16, 16)
    region[:, :, :8] = 1
    a = torch.tensor([0.1, 0.5, 0.9]).view(-1, 1, 1, 1)
    xt, eps = dataset.edit_pair_input(src, tgt, region, noise, a)
    # the input shows the source: it is the source's forward-noised latent
    assert torch.allclose(xt, a.sqrt() * src + (1 - a).sqrt() * noise, atol=1e-6)
    # DDIM's x0-prediction from the target epsilon is the edited latent, everywhere
    x0 = (xt - (1 - a).sqrt() * eps) / a.sqrt()
    assert torch.allclose(x0, tgt, atol=1e-5)
    # outside the edit cells the target is the plain noise
    assert torch.allclose(eps[:, :, 8:], noise[:, :, 8:], atol=1e-5)


def test_encode_pairs_and_scenes_shapes_and_agreement() -> None:
    from diffedit.shapes.train import build_vae

    vae = build_vae(0).eval()
    scenes = dataset.encode_scenes(vae, 0.5, range(6), (0.0, 0.0, 1.0))
    assert scenes["latents"].shape == (6, 4, 16, 16) and scenes["latents"].dtype == torch.float16
    assert scenes["objects"].shape == (6, 1, 16, 16) and float(scenes["objects"].max()) == 1.0
    assert all(c.count(" and ") == 2 for c in scenes["captions"])  # 3 objects each
    pairs = dataset.encode_pairs(vae, 0.5, range(3_000_000, 3_000_004))
    assert pairs["source"].shape == pairs["target"].shape == (4, 4, 16, 16)
    assert pairs["captions"] == [train_edit_pair(s).query for s in range(3_000_000, 3_000_004)]
    assert set(pairs["region"].unique().tolist()) <= {0.0, 1.0}
    joined = dataset.concat([pairs, pairs])
    assert joined["source"].shape[0] == 8 and len(joined["kinds"]) == 8

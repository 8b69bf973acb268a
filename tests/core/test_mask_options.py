"""Mask options beyond the paper (diffedit/mask.py): binary morphology on exact arrays, the union
cover, the post-processing order and defaults, the parameters' validation, the paper preset, and
the editor's evaluation counts with each cover."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from diffedit.editor import DiffEditor, EditRequest
from diffedit.mask import (
    ContrastMaps,
    close,
    contrast_maps,
    dilate,
    erode,
    fill_holes,
    postprocess,
    reconstruct,
    union_cover,
)
from diffedit.params import PAPER_MASK, EditParams
from diffedit.schedule import alpha_at

REPO = Path(__file__).resolve().parents[2]


def grid(rows: list[str]) -> torch.Tensor:
    """A (1, h, w) bool mask from strings of '#' and '.'."""
    return torch.tensor([[c == "#" for c in r] for r in rows]).unsqueeze(0)


def test_dilate_erode_close_exact():
    m = grid([".....", ".....", "..#..", ".....", "....."])
    assert torch.equal(dilate(m, 1), grid([".....", ".###.", ".###.", ".###.", "....."]))
    assert torch.equal(erode(dilate(m, 1), 1), m)
    assert torch.equal(dilate(m, 0), m)
    # Erosion treats the outside as inside: a mask filling a border is not eaten from there.
    full = torch.ones(1, 4, 4, dtype=torch.bool)
    assert torch.equal(erode(full, 1), full)
    # Closing bridges a one-cell gap and leaves a solid block as it was.
    gap = grid(["......", ".##.#.", ".##.#.", "......"])
    assert torch.equal(close(gap, 1), grid(["......", ".####.", ".####.", "......"]))
    # A mask touching the border is closed, not grown up to the border.
    edge = grid(["#.#..", "#.#..", ".....", "....."])
    assert torch.equal(close(edge, 1), grid(["###..", "###..", ".....", "....."]))


def test_fill_holes_fills_enclosed_cells_only():
    ring = grid([".....", ".###.", ".#.#.", ".###.", "....."])
    assert torch.equal(fill_holes(ring), grid([".....", ".###.", ".###.", ".###.", "....."]))
    # A gap open to the border is not a hole.
    cup = grid([".....", ".#.#.", ".#.#.", ".###.", "....."])
    assert torch.equal(fill_holes(cup), cup)


def test_reconstruct_keeps_the_touched_components():
    mask = grid(["##...", "##...", ".....", "...##", "...##"])
    marker = grid([".....", ".#...", ".....", ".....", "....."])
    assert torch.equal(reconstruct(marker, mask), grid(["##...", "##...", ".....", ".....", "....."]))


def test_union_cover_adds_only_the_objects_the_difference_touches():
    # Relevance lights two objects; the contrast mask touches the left one only.
    rel = torch.zeros(1, 5, 6)
    rel[0, 0:3, 0:2] = 0.9  # object A
    rel[0, 3:5, 4:6] = 0.8  # object B
    binary = grid(["......", ".#....", "......", "......", "......"])
    out, soft = union_cover(binary, rel, torch.zeros_like(rel), 0.5)
    expected = torch.zeros(1, 5, 6, dtype=torch.bool)
    expected[0, 0:3, 0:2] = True
    assert torch.equal(out, expected)
    assert soft[0, 0, 0] == pytest.approx(0.9) and soft[0, 4, 5] == 0


def _maps() -> ContrastMaps:
    d = torch.zeros(1, 6, 6)
    d[0, 1:5, 1:5] = 1.0
    d[0, 2:4, 2:4] = 0.3  # a hole in the contrast: where old and new agree
    return ContrastMaps(d, torch.zeros_like(d), torch.zeros_like(d))


def test_postprocess_order_and_paper_defaults():
    maps = _maps()
    common = dict(clip_quantile=torch.tensor([1.0]), smoothing=torch.zeros(1), threshold=torch.tensor([0.5]))
    paper = postprocess(maps, **common)
    assert paper.binary.sum() == 12 and not paper.binary[0, 2, 2]  # the ring: the paper keeps the hole
    holes = postprocess(maps, **common, holes=torch.tensor([True]))
    assert holes.binary.sum() == 16
    dilated = postprocess(maps, **common, holes=torch.tensor([True]), dilation=torch.tensor([1]))
    assert dilated.binary.sum() == 36  # 4x4 grown by one cell on every side in a 6x6 image
    # An empty contrast (query == reference) stays empty whatever the options.
    flat = ContrastMaps(torch.zeros(1, 6, 6), torch.ones(1, 6, 6), torch.ones(1, 6, 6))
    out = postprocess(
        flat,
        **common,
        union=torch.tensor([True]),
        union_threshold=torch.tensor([0.5]),
        holes=torch.tensor([True]),
        closing=torch.tensor([1]),
    )
    assert not out.binary.any()


def test_contrast_maps_relevance_costs_n_more_evaluations_and_keeps_the_contrast(bundle, alphas):
    x0 = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    emb = bundle.encode_prompts(["a red cat", "a blue cat", ""])
    noises = [torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    t = torch.tensor([481, 481])
    a = alpha_at(alphas, t)
    args = (bundle.denoise, x0, noises, t, a.sqrt(), (1 - a).sqrt(), emb[[0, 0]], emb[[1, 1]])
    plain_evals, rel_evals = torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64)
    plain = contrast_maps(*args, max_batch=64, evals=plain_evals)
    rel = contrast_maps(
        *args, max_batch=64, evals=rel_evals, emb_empty=emb[[2, 2]], relevance=torch.tensor([False, True])
    )
    assert plain_evals.tolist() == [6, 6] and rel_evals.tolist() == [6, 9]
    assert torch.allclose(rel.difference, plain.difference, atol=1e-6)
    assert torch.equal(rel.relevance_query[0], torch.zeros(16, 16)) and (rel.relevance_query[1] > 0).all()
    assert (rel.relevance_reference[1] > 0).all()
    with pytest.raises(ValueError, match="emb_empty"):
        contrast_maps(*args, max_batch=64, relevance=torch.tensor([True, True]))


def test_new_mask_params_are_validated():
    for bad in (
        {"mask_cover": "everything"},
        {"mask_union_threshold": 1.5},
        {"mask_closing": -1},
        {"mask_dilation": 9},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            EditParams.from_dict(bad, source="job.yaml")
    with pytest.raises(TypeError, match="mask_fill_holes"):
        EditParams.from_dict({"mask_fill_holes": 1}, source="job.yaml")


def test_paper_preset_matches_the_config_file_and_turns_every_extra_off():
    data = yaml.safe_load((REPO / "configs" / "masks" / "paper.yaml").read_text())
    assert data["params"] == PAPER_MASK
    p = EditParams().replace(**PAPER_MASK)
    assert (p.mask_threshold, p.mask_clip_quantile, p.mask_smoothing, p.num_mask_draws) == (
        0.5,
        0.99,
        0.0,
        10,
    )
    assert (p.mask_cover, p.mask_closing, p.mask_fill_holes, p.mask_dilation) == ("difference", 0, False, 0)
    assert set(PAPER_MASK) == {f for f in EditParams.field_names() if f.startswith(("mask_", "num_mask"))}


def test_paper_preset_loads_as_a_job_preset(tmp_path):
    from pipeline.config import load_job

    job = tmp_path / "job.yaml"
    job.write_text(
        "name: t\npresets: [models/shapes-v3, masks/paper, compute/cpu]\n"
        "input: {paths: [data/x]}\noutput: {path: out/x}\n"
    )
    cfg = load_job(job, configs_dir=REPO / "configs")
    assert {k: getattr(cfg.params, k) for k in PAPER_MASK} == PAPER_MASK


def test_editor_union_cover_and_options(bundle, random_image):
    editor = DiffEditor(bundle, max_batch=64)
    image = random_image(0, 32, 32)
    paper = EditParams(num_inference_steps=4, encode_ratio=0.5).replace(**{**PAPER_MASK, "num_mask_draws": 3})
    union = paper.replace(mask_cover="union", mask_fill_holes=True, mask_dilation=1)
    a, b = editor.edit(
        [
            EditRequest(image, "a red cat", "a blue cat", seed=1, params=paper),
            EditRequest(image, "a red cat", "a blue cat", seed=1, params=union),
        ]
    )
    assert a.counters["unet_evals_mask"] == 6 and b.counters["unet_evals_mask"] == 9
    # Union, hole filling and dilation only ever add cells to the paper's mask.
    assert (b.mask_binary_latent | ~a.mask_binary_latent).all()
    assert b.mask_binary_latent.sum() > a.mask_binary_latent.sum()

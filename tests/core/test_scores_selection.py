"""Per-edit scores (diffedit.scores) and best-of-K selection (diffedit.select): exact values of each
measure on constructed inputs, the alignment score's formula, and the editor's candidates — candidate 0
is the plain edit, candidates share the inversion (cost below K plain edits, as counted), a row's
candidates and choice do not depend on its batch-mates."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffedit.editor import DiffEditor, EditRequest
from diffedit.modelcall import vp_denoiser
from diffedit.params import EditParams
from diffedit.scores import (
    PSNR_CAP,
    Scoring,
    alignment_errors,
    alignment_score,
    contrast,
    mask_statistics,
    preservation,
)
from diffedit.select import Selection, candidate_params, candidate_seed, choose, objective, unet_evals_per_row

FAST = EditParams(num_inference_steps=10, num_mask_draws=3)


def _mask(h: int, w: int, box: tuple[int, int, int, int] | None) -> Image.Image:
    m = np.zeros((h, w), np.uint8)
    if box:
        y0, y1, x0, x1 = box
        m[y0:y1, x0:x1] = 255
    return Image.fromarray(m, "L")


# --------------------------------------------------------------------------- preservation


def test_preservation_is_measured_outside_the_mask_only(random_image):
    original = random_image(0, 48, 40)
    edited = np.asarray(original).copy()
    edited[10:20, 10:30] = 0  # a change inside the mask
    edited_image = Image.fromarray(edited)
    psnr, ssim = preservation(edited_image, original, _mask(40, 48, (8, 22, 8, 32)))
    # SSIM's 11 x 11 window reaches 5 px into the mask from the pixels next to it: close to 1, not 1
    assert psnr == PSNR_CAP and 0.99 < ssim < 1.0
    # the same change seen with a mask that does not cover it: finite PSNR, exactly the formula
    psnr, ssim = preservation(edited_image, original, _mask(40, 48, (0, 4, 0, 4)))
    outside = np.ones((40, 48), bool)
    outside[0:4, 0:4] = False
    diff = (np.asarray(edited_image, float) - np.asarray(original, float)) ** 2
    expected = 10 * math.log10(255**2 / diff.mean(axis=2)[outside].mean())
    assert psnr == pytest.approx(expected, rel=1e-6) and ssim < 0.99
    # everything masked: nothing to measure
    assert preservation(edited_image, original, _mask(40, 48, (0, 40, 0, 48))) == (None, None)


def test_preservation_fails_a_blurred_or_blank_background(random_image):
    from PIL import ImageFilter

    original = random_image(1, 64, 64)
    mask = _mask(64, 64, (20, 40, 20, 40))
    psnr_ok, ssim_ok = preservation(original, original, mask)
    psnr_blur, ssim_blur = preservation(original.filter(ImageFilter.GaussianBlur(2)), original, mask)
    psnr_blank, ssim_blank = preservation(Image.new("RGB", (64, 64), "white"), original, mask)
    assert psnr_ok == PSNR_CAP and ssim_ok == pytest.approx(1.0)
    assert psnr_blur < 20 and ssim_blur < 0.5
    assert psnr_blank < 10 and ssim_blank < 0.1


# --------------------------------------------------------------------------- mask statistics


def test_mask_statistics_count_8_connected_components():
    m = torch.zeros(8, 8, dtype=torch.bool)
    assert mask_statistics(m) == (0, None)
    m[0:2, 0:2] = True  # 4 cells
    m[2, 2] = True  # touches the first diagonally: the same component (8-connected)
    m[5:8, 5:8] = True  # 9 cells, apart
    count, largest = mask_statistics(m)
    assert count == 2 and largest == pytest.approx(9 / 14)
    assert mask_statistics(torch.ones(4, 4, dtype=torch.bool)) == (1, 1.0)


# --------------------------------------------------------------------------- alignment


def test_contrast_and_alignment_score_follow_the_formula():
    e_edit = torch.tensor([[[1.0, 9.0]], [[3.0, 9.0]]])  # (2, 1, 2): [E_Q, E_R]
    e_input = torch.tensor([[[2.0, 0.0]], [[2.0, 0.0]]])
    inside = torch.tensor([[True, False]])
    assert contrast(e_edit, inside) == pytest.approx((3 - 1) / (3 + 1))
    assert contrast(e_input, inside) == 0.0
    assert alignment_score(e_edit, e_input, inside) == pytest.approx(0.5)
    assert alignment_score(e_edit, e_input, torch.zeros(1, 2, dtype=torch.bool)) == 0.0


def test_alignment_errors_are_the_mean_squared_noise_errors_per_text():
    """A fake denoiser whose prediction is the text's first value everywhere: E_T = mean (e - v_T)^2."""

    def eps_fn(latents, t, emb):
        return emb[:, 0, 0].view(-1, 1, 1, 1).expand_as(latents).clone()

    latents = torch.zeros(2, 4, 3, 3)
    noises = torch.randn(2, 3, 4, 3, 3, generator=torch.Generator().manual_seed(0))  # (N, J K, C, h, w)
    t, a = torch.tensor([10, 20, 30]), torch.tensor([0.9, 0.8, 0.7])
    q, r = torch.full((2, 1, 1), 0.5), torch.full((2, 1, 1), -1.0)
    evals = torch.zeros(2, dtype=torch.int64)
    errors = alignment_errors(
        vp_denoiser(eps_fn), latents, noises, t, a.sqrt(), (1 - a).sqrt(), q, r, max_batch=4, evals=evals
    )
    assert errors.shape == (2, 2, 3, 3) and evals.tolist() == [6, 6]  # 2 texts x 3 draws each
    torch.testing.assert_close(errors[:, 0], ((noises - 0.5) ** 2).mean(dim=(1, 2)))
    torch.testing.assert_close(errors[:, 1], ((noises + 1.0) ** 2).mean(dim=(1, 2)))


# --------------------------------------------------------------------------- selection


def test_candidate_seeds_and_params_are_derived_and_fixed():
    assert candidate_seed(42, 0) == 42
    seeds = [candidate_seed(42, k) for k in range(1, 5)]
    assert len(set(seeds)) == 4 and all(0 <= s < 2**63 for s in seeds)
    assert seeds == [candidate_seed(42, k) for k in range(1, 5)] and candidate_seed(43, 1) != seeds[0]
    variants = ({"mask_threshold": 0.2}, {"mask_dilation": 1})
    assert candidate_params(FAST, variants, 0) == FAST
    assert candidate_params(FAST, variants, 1).mask_threshold == 0.2
    assert candidate_params(FAST, variants, 3).mask_threshold == 0.2  # variants cycle
    with pytest.raises(ValueError, match="encode_ratio"):
        Selection(candidates=2, variants=({"encode_ratio": 0.5},))  # would break the shared inversion
    with pytest.raises(ValueError, match="unknown score"):
        Selection(by={"clip": 1.0})


def test_choose_maximises_the_weighted_sum_and_ranks_nulls_last():
    cands = [
        {"alignment": 0.1, "psnr": 30.0},
        {"alignment": 0.3, "psnr": 20.0},
        {"alignment": None, "psnr": 99},
    ]
    assert choose(cands, {"alignment": 1.0}) == 1
    assert choose(cands, {"alignment": 1.0, "psnr": 0.1}) == 0  # 3.1 against 2.3
    assert objective(cands[2], {"alignment": 1.0}) == -math.inf
    assert choose([{"alignment": 0.2}, {"alignment": 0.2}], {"alignment": 1.0}) == 0  # ties: the plain edit


# --------------------------------------------------------------------------- the editor


@pytest.fixture(scope="module")
def bundle64():
    """float64: batched float32 kernels round differently and the random UNet's sampling amplifies it
    (tests/core/test_editor.py); in float64 a result that depends on its batch would show."""
    from diffedit.tiny import tiny_bundle

    return tiny_bundle(seed=0, dtype=torch.float64)


@pytest.fixture(scope="module")
def rows(random_image):
    return [
        EditRequest(random_image(10, 32, 32), "a red circle", "a blue circle", seed=5, id="a"),
        EditRequest(random_image(11, 40, 24), "a green dog", "a dog", seed=6, id="b"),
        EditRequest(random_image(12, 32, 32), "a yellow star", "a star", seed=7, id="c"),
    ]


def test_scores_do_not_change_the_edit_and_candidate_0_is_the_plain_edit(bundle64, rows):
    bundle = bundle64
    plain = DiffEditor(bundle, FAST, max_batch=64).edit(rows)
    scored = DiffEditor(bundle, FAST, max_batch=64, scoring=Scoring()).edit(rows)
    best = DiffEditor(bundle, FAST, max_batch=64, scoring=Scoring(), selection=Selection(candidates=3))
    candidates = best.edit_candidates(rows)
    for p, s, cands in zip(plain, scored, candidates, strict=True):
        assert p.scores == {} and set(s.scores) == set(Scoring().names)
        assert np.array_equal(np.asarray(p.image), np.asarray(s.image))
        assert [c.candidate for c in cands] == [0, 1, 2]
        assert [c.candidate_seed for c in cands] == [candidate_seed(p.seed, k) for k in range(3)]
        assert np.array_equal(np.asarray(cands[0].image), np.asarray(p.image))
        assert cands[0].scores == pytest.approx(s.scores)
        # the candidates differ (their masks' draws do) and share the input latent
        assert not all(np.array_equal(cands[0].mask_soft_latent, c.mask_soft_latent) for c in cands[1:])
        assert all(torch.equal(cands[0].input_latent, c.input_latent) for c in cands)


@pytest.mark.parametrize(
    "switches",
    [{"alignment": False}, {"preservation": False, "mask": False}],
    ids=["no-alignment", "alignment-only"],
)
def test_a_score_switched_off_is_not_computed_and_its_column_is_null(bundle, rows, switches):
    """README: each score switched off in ``scoring`` is a null column: the editor leaves it out of
    ``scores`` (the job's row is ``scores.get(name)`` for every name, ``pipeline.stages``), and an
    alignment switched off spends no evaluations on it."""
    from diffedit.scores import SCORE_NAMES

    scoring = Scoring(**switches)
    result = DiffEditor(bundle, FAST, max_batch=64, scoring=scoring).edit(rows[:1])[0]
    assert set(result.scores) == set(scoring.names)
    row = {f"score_{name}": result.scores.get(name) for name in SCORE_NAMES}
    off = {"alignment"} if not scoring.alignment else {"psnr", "ssim", "mask_components", "mask_largest"}
    assert all(row[f"score_{name}"] is None for name in off)
    assert all(row[f"score_{name}"] is not None for name in scoring.names)
    assert (result.counters["unet_evals_score"] > 0) == scoring.alignment


def test_best_of_k_keeps_the_best_candidate_and_costs_less_than_k_edits(bundle, rows):
    scoring = Scoring()

    def editor():  # a fresh one per call: no trajectory kept from an earlier call (DiffEditor.trajectory_cache)
        return DiffEditor(bundle, FAST, max_batch=64, scoring=scoring, selection=Selection(candidates=3))

    results = editor().edit(rows)
    candidates = editor().edit_candidates(rows)
    for result, cands in zip(results, candidates, strict=True):
        values = [c.scores["alignment"] for c in cands]
        assert result.candidate == int(np.argmax(values))  # ties: the lowest index
        assert result.scores == cands[result.candidate].scores
        assert [c["seed"] for c in result.candidates] == [c.candidate_seed for c in cands]
        counted = result.counters
        expected = unet_evals_per_row(FAST, scoring, 3)
        assert counted["unet_evals"] == expected["total"] == sum(c.counters["unet_evals"] for c in cands)
        assert counted["unet_evals_encode"] == expected["encode"] == FAST.num_encode_steps  # shared, once
        assert counted["vae_encodes"] == 1 and counted["vae_decodes"] == 3
        # three separately scored edits would run the inversion and the input's score three times
        assert counted["unet_evals"] < 3 * unet_evals_per_row(FAST, scoring, 1)["total"]
    # at the defaults, best-of-2 with every score costs less than two plain, unscored edits
    assert unet_evals_per_row(EditParams(), Scoring(), 2)["total"] == 252 < 2 * 140


def test_a_rows_candidates_and_choice_do_not_depend_on_its_batch_mates(bundle64, rows):
    bundle = bundle64
    editor = DiffEditor(bundle, FAST, max_batch=64, scoring=Scoring(), selection=Selection(candidates=2))
    alone = editor.edit([rows[0]])[0]
    batched = DiffEditor(
        bundle, FAST, max_batch=5, scoring=Scoring(), selection=Selection(candidates=2)
    ).edit([rows[1], rows[0], rows[2]])[1]
    assert batched.id == "a" and batched.candidate == alone.candidate
    assert np.array_equal(alone.mask_binary_latent, batched.mask_binary_latent)
    for name in Scoring().names:
        assert batched.scores[name] == pytest.approx(alone.scores[name], rel=1e-9, abs=1e-12), name


def test_selection_needs_the_scores_it_ranks_by(bundle):
    with pytest.raises(ValueError, match="alignment"):
        DiffEditor(bundle, FAST, scoring=Scoring(alignment=False), selection=Selection(candidates=2))
    with pytest.raises(ValueError, match="alignment"):
        DiffEditor(bundle, FAST, scoring=None, selection=Selection(candidates=2))

"""CLIP scores (diffedit.clip) on a tiny random CLIP the test writes: each of the four is its formula on
the model's own embeddings, identities hold (an unchanged image: image-image 1, direction 0), the
editor adds them per candidate, and a model that is not on disk is refused without any download."""

from __future__ import annotations

import pytest
import torch

from diffedit.clip import (
    CLIP_SCORE_NAMES,
    ClipModelError,
    ClipScorer,
    clip_fingerprint,
    resolve_clip_model,
    save_tiny_clip,
)
from diffedit.editor import DiffEditor, EditRequest
from diffedit.params import EditParams
from diffedit.scores import Scoring


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def test_the_four_scores_are_their_formulas(clip_dir, random_image):
    scorer = ClipScorer(str(clip_dir))
    a, b = random_image(0, 48, 40), random_image(1, 40, 48)
    got = scorer.score([a, a], [b, a], ["a red circle", "a red circle"], ["a blue star", "a blue star"])
    i_a, i_b = scorer.images([a]), scorer.images([b])  # (1, P) normalised
    t_r, t_q = scorer.texts(["a red circle"]), scorer.texts(["a blue star"])
    assert torch.allclose(i_a.norm(dim=-1), torch.ones(1)) and torch.allclose(t_q.norm(dim=-1), torch.ones(1))
    cos = torch.nn.functional.cosine_similarity
    assert got[0]["clip_text"] == pytest.approx(float((i_b * t_q).sum()), abs=1e-5)
    assert got[0]["clip_caption"] == pytest.approx(float((i_a * t_r).sum()), abs=1e-5)
    assert got[0]["clip_direction"] == pytest.approx(float(cos(i_b - i_a, t_q - t_r)), abs=1e-5)
    assert got[0]["clip_image"] == pytest.approx(float((i_a * i_b).sum()), abs=1e-5)
    # an unchanged image: image-image 1, no change to follow the text's
    assert got[1]["clip_image"] == pytest.approx(1.0, abs=1e-5) and got[1]["clip_direction"] == 0.0
    assert all(-1 - 1e-6 <= v <= 1 + 1e-6 for row in got for v in row.values())


def test_the_editor_adds_clip_scores_to_every_candidate(bundle, clip_dir, random_image):
    from diffedit.select import Selection

    editor = DiffEditor(bundle, EditParams(num_inference_steps=6, num_mask_draws=2), max_batch=32,
                        scoring=Scoring(clip_model=str(clip_dir)), selection=Selection(candidates=2))  # fmt: skip
    request = EditRequest(random_image(3, 32, 32), "a red circle", "a blue circle", seed=1)
    cands = editor.edit_candidates([request])[0]
    direct = ClipScorer(str(clip_dir)).score(
        [request.image] * 2, [c.image for c in cands], [request.caption] * 2, [request.query] * 2
    )
    for c, expected in zip(cands, direct, strict=True):
        for name in CLIP_SCORE_NAMES:
            assert c.scores[name] == pytest.approx(expected[name], abs=1e-5)
    # selection can rank by a CLIP score
    best = DiffEditor(bundle, EditParams(num_inference_steps=6, num_mask_draws=2), max_batch=32,
                      scoring=Scoring(clip_model=str(clip_dir)),
                      selection=Selection(candidates=2, by={"clip_direction": 1.0})).edit([request])[0]  # fmt: skip
    assert best.candidate == max((0, 1), key=lambda k: (cands[k].scores["clip_direction"], -k))


def test_a_clip_model_that_is_not_on_disk_is_refused_without_a_download(tmp_path, monkeypatch, clip_dir):
    with pytest.raises(ClipModelError, match="no such directory"):
        resolve_clip_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipModelError, match=r"no config\.json"):
        resolve_clip_model(str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    with pytest.raises(ClipModelError, match="never downloaded"):
        resolve_clip_model("hf://openai/clip-vit-large-patch14")
    # the fingerprint is the files' content: a copy elsewhere has the same one
    import shutil

    copy = shutil.copytree(clip_dir, tmp_path / "copy")
    assert clip_fingerprint(str(copy)) == clip_fingerprint(str(clip_dir))

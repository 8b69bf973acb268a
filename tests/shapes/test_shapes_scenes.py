"""The synthetic shapes world: determinism, exact masks, captions, unambiguous edit tasks."""

from __future__ import annotations

import numpy as np
import pytest

from diffedit.shapes.scenes import (
    EVAL_SEED_BASE,
    TRAIN_SEEDS,
    EditTask,
    Scene,
    eval_scene_seed,
    make_edit_tasks,
    sample_scene,
)
from diffedit.shapes.vocab import (
    BACKGROUND_COLOURS,
    OBJECT_COLOURS,
    SHAPES,
    TEXTURES,
    VOCABULARY,
    build_shapes_tokenizer,
)

SEEDS = range(60)


def _arr(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)  # (H, W, 3)


def test_sample_scene_is_deterministic() -> None:
    for seed in (0, 7, 123_456):
        a, b = sample_scene(seed), sample_scene(seed)
        assert isinstance(a, Scene)
        assert np.array_equal(_arr(a.image), _arr(b.image))
        assert a.caption == b.caption
        for oa, ob in zip(a.objects, b.objects, strict=True):
            assert np.array_equal(oa.mask, ob.mask)
    assert sample_scene(1).caption != sample_scene(2).caption or not np.array_equal(
        _arr(sample_scene(1).image), _arr(sample_scene(2).image)
    )


@pytest.mark.parametrize("size", [64, 96])
def test_masks_are_exact(size: int) -> None:
    """Each object's mask is exactly the pixels of its colour that it owns; masks are disjoint."""
    for seed in SEEDS:
        scene = sample_scene(seed, size)
        img = _arr(scene.image)
        assert img.shape == (size, size, 3)
        owned = np.zeros((size, size), dtype=bool)
        for obj in scene.objects:
            assert obj.mask.dtype == bool and obj.mask.shape == (size, size)
            assert not (owned & obj.mask).any()
            owned |= obj.mask
            assert (img[obj.mask] == OBJECT_COLOURS[obj.colour]).all()
            assert obj.mask.sum() >= 0.6 * obj.full_mask.sum() > 0
        # background pixels are achromatic: no object colour outside the masks
        bg = img[~owned]
        assert (bg.max(-1) - bg.min(-1) == 0).all()


def test_scene_variety() -> None:
    scenes = [sample_scene(s) for s in range(300)]
    counts = {len(s.objects) for s in scenes}
    assert counts == {1, 2, 3}
    assert {o.shape for s in scenes for o in s.objects} == set(SHAPES)
    assert {o.colour for s in scenes for o in s.objects} == set(OBJECT_COLOURS)
    assert {s.background.texture for s in scenes} == set(TEXTURES)
    assert {s.background.colour for s in scenes} == set(BACKGROUND_COLOURS)
    assert len(SHAPES) >= 4 and len(OBJECT_COLOURS) >= 6
    for s in scenes:  # non-uniform backgrounds
        assert np.ptp(_arr(s.image)[~np.any([o.mask for o in s.objects], axis=0)]) > 10
    radii = [o.radius for s in scenes for o in s.objects]
    assert max(radii) - min(radii) > 4


def test_captions_match_scene() -> None:
    tokenizer = build_shapes_tokenizer()
    for seed in SEEDS:
        scene = sample_scene(seed)
        words = scene.caption.split()
        assert set(words) <= set(VOCABULARY)
        left_to_right = sorted(scene.objects, key=lambda o: o.cx)
        phrases = " and ".join(f"{'an' if o.colour[0] in 'aeiou' else 'a'} {o.phrase}" for o in left_to_right)
        assert scene.caption == f"{phrases} on a {scene.background.phrase}"
        assert scene.background_description == scene.background.phrase
        # no two objects a caption cannot tell apart
        assert len({(o.colour, o.shape) for o in scene.objects}) == len(scene.objects)
        # every word is one token, and the caption fits the tokenizer
        ids = tokenizer(scene.caption).input_ids
        assert len(ids) == len(words) + 2 <= tokenizer.model_max_length


def test_edit_tasks() -> None:
    tasks = make_edit_tasks(0, 40)
    assert len(tasks) == 40
    assert len({t.id for t in tasks}) == 40
    assert [t.kind for t in tasks[:4]] == ["recolor", "reshape", "recolor", "reshape"]
    again = make_edit_tasks(0, 40)
    assert [t.id for t in again] == [t.id for t in tasks]
    assert all(np.array_equal(a.region, b.region) for a, b in zip(tasks, again, strict=True))
    for t in tasks:
        assert isinstance(t, EditTask)
        assert t.seed >= EVAL_SEED_BASE and t.seed not in TRAIN_SEEDS
        assert t.caption == sample_scene(t.seed).caption
        assert t.query != t.caption
        assert np.array_equal(t.region, t.object_mask_before | t.object_mask_after)
        before, after = _arr(t.image), _arr(t.target_image)
        # the edit changes pixels inside the region only
        assert (before[~t.region] == after[~t.region]).all()
        assert (after[t.object_mask_after] == OBJECT_COLOURS[t.target_colour]).all()
        if t.kind == "recolor":
            assert t.target_shape == t.source_shape and t.target_colour != t.source_colour
            assert (
                t.query.replace(t.target_colour, t.source_colour) == t.caption or t.target_colour in t.query
            )
        else:
            assert t.target_colour == t.source_colour and t.target_shape != t.source_shape
        # unambiguous: the query names each object once
        words = t.query.split(" on a ")[0].split(" and ")
        assert len(set(words)) == len(words)
        assert f"{t.target_colour} {t.target_shape}" in t.query


def test_eval_seeds_disjoint_from_training() -> None:
    assert eval_scene_seed(0, 0) >= TRAIN_SEEDS.stop
    with pytest.raises(ValueError):
        eval_scene_seed(-1, 0)
    assert make_edit_tasks(1, 3, kinds=("recolor",))[0].id != make_edit_tasks(0, 3, kinds=("recolor",))[0].id
    assert all(len(sample_scene(t.seed).objects) == 1 for t in make_edit_tasks(3, 10, max_objects=1))


def test_tokenizer_is_the_same_in_every_process(tmp_path) -> None:
    """Token ids must not depend on the process: a seeded training run has to give the same model.
    (The ``tokenizers`` BPE trainer numbered tied symbols in hash-map order.)"""
    import subprocess
    import sys

    saved = []
    for k in range(3):
        out = tmp_path / str(k)
        code = f"from diffedit.shapes.vocab import build_shapes_tokenizer as b; b().save_pretrained({str(out)!r})"
        subprocess.run([sys.executable, "-c", code], check=True)
        saved.append((out / "tokenizer.json").read_text())
    assert saved[0] == saved[1] == saved[2]
    tokenizer = build_shapes_tokenizer()
    vocab = tokenizer.get_vocab()
    assert vocab["<|startoftext|>"] == 0 and vocab["<|endoftext|>"] == 1
    assert [vocab[c] for c in "abcdefghijklmnopqrstuvwxyz"] == list(range(2, 28))
    # every word one token; an unknown word falls back to letters
    for word in VOCABULARY:
        assert len(tokenizer(word).input_ids) == 3, word
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("blob").input_ids[1:-1])
    assert len(pieces) > 1 and "".join(pieces) == "blob</w>"


def test_forced_object_count_and_the_other_objects():
    """``n_objects`` forces the scenes' object count (the benchmark's 3-object slice), and each task
    lists every other object with its visible pixels in the target scene, disjoint from the edited
    object's new footprint."""
    tasks = make_edit_tasks(1000, 6, kinds=("recolor",), n_objects=3)
    for t in tasks:
        scene = sample_scene(t.seed, n_objects=3)
        assert t.n_objects == len(scene.objects) == 3 and len(t.others) == 2
        assert t.image.tobytes() == scene.image.tobytes()
        others = [o for j, o in enumerate(scene.objects) if j != t.object_index]
        assert [(c, s) for c, s, _ in t.others] == [(o.colour, o.shape) for o in others]
        for _, _, pixels in t.others:
            assert pixels.any() and not (pixels & t.object_mask_after).any()
    default = make_edit_tasks(0, 20)
    assert all(t.n_objects == len(sample_scene(t.seed).objects) == 1 + len(t.others) for t in default)

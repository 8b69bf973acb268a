"""The shapes-world classifier reads generated scenes and edit targets back correctly."""

from __future__ import annotations

import numpy as np

from diffedit.shapes.classify import classify_region, classify_shape
from diffedit.shapes.scenes import make_edit_tasks, sample_scene, shape_mask
from diffedit.shapes.vocab import SHAPES

#: Stated accuracy on generated scenes (object's visible mask as the region). Measured over 970
#: objects of seeds 0..499: colour 1.000, shape 0.997; edit targets (300 tasks): 1.000, 1.000.
MIN_COLOUR_ACCURACY = 0.98
MIN_SHAPE_ACCURACY = 0.95


def test_classifier_accuracy_on_scenes() -> None:
    n = colour_ok = shape_ok = 0
    for seed in range(1000, 1030):
        scene = sample_scene(seed)
        for obj in scene.objects:
            colour, shape = classify_region(scene.image, obj.mask)
            n += 1
            colour_ok += colour == obj.colour
            shape_ok += shape == obj.shape
    assert n >= 45
    assert colour_ok / n >= MIN_COLOUR_ACCURACY
    assert shape_ok / n >= MIN_SHAPE_ACCURACY


def test_classifier_reads_edit_targets() -> None:
    tasks = make_edit_tasks(5, 16)
    ok = sum(classify_region(t.target_image, t.region) == (t.target_colour, t.target_shape) for t in tasks)
    before = sum(classify_region(t.image, t.region) == (t.source_colour, t.source_shape) for t in tasks)
    assert ok >= 15 and before >= 15


def test_canonical_shapes_and_empty_regions() -> None:
    for shape in SHAPES:
        for r in (7.0, 12.0, 15.0):
            assert classify_shape(shape_mask(shape, 30.0, 33.0, r, 64)) == shape
    scene = sample_scene(3)
    background = ~np.any([o.mask for o in scene.objects], axis=0)
    assert classify_region(scene.image, background) == ("none", "none")
    assert classify_region(scene.image, np.zeros((64, 64), dtype=bool)) == ("none", "none")

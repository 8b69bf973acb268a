"""The strict judge (``diffedit.shapes.judge``, ``benchmarks.quality.judge``): the ground truth passes,
every broken edit fails, and each measurement has its exact value on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from benchmarks.quality import Judgement, judge
from benchmarks.quality.degenerate import DEGENERATE, blurred, extra_star, others_swollen
from diffedit.shapes import judge as J
from diffedit.shapes.scenes import make_edit_tasks, same_colour_contact, task_from_id

#: Held-out tasks of a stream that neither the benchmark nor the calibration reads figures from.
TASKS = make_edit_tasks(3, 60)


def test_judge_is_the_benchmarks_entry_point():
    assert judge is J.judge and Judgement is J.Judgement


def test_the_ground_truth_passes_and_the_input_fails():
    for t in TASKS:
        gt = judge(t, t.target_image)
        assert gt.success and gt.clean and gt.reason == "", (t.id, gt)
        assert gt.object_iou == 1.0 and gt.others_iou == 1.0 and gt.blob_px == 0
        assert gt.background_psnr == J.PSNR_CAP_DB and gt.old_colour == 0.0
        unedited = judge(t, t.image)
        assert not unedited.success and not unedited.clean, (t.id, unedited)


@pytest.mark.parametrize("name", sorted(DEGENERATE))
def test_every_degenerate_edit_fails(name):
    """Each broken edit loses the verdict it must lose, on every task it applies to (``others_swollen``
    needs other objects)."""
    make, verdict = DEGENERATE[name]
    tasks = [t for t in TASKS if t.others] if name == "others_swollen" else TASKS
    assert len(tasks) >= 20
    for t in tasks:
        image = make(t)
        assert image.size == t.image.size and image.mode == "RGB"
        got = judge(t, image)
        assert not getattr(got, verdict), (name, t.id, got)
        assert not got.clean, (name, t.id, got)


def test_edits_right_but_unclean_keep_their_success():
    """A perfect edit with a star painted beside it, or with its neighbours swollen, is a success that
    is not clean, for the reason that names what is wrong. (A neighbour of the target colour that
    swells over the edited object spoils the edit itself: those tasks are left out.)"""
    apart = [t for t in TASKS if t.others and all(c != t.target_colour for c, _, _ in t.others)]
    assert len(apart) >= 10
    for t in apart[:10]:
        star = judge(t, extra_star(t))
        assert star.success and not star.clean and "blob" in star.reason, star
        swollen = judge(t, others_swollen(t))
        assert swollen.success and not swollen.clean and "another object" in swollen.reason, swollen


def test_blur_fails_on_sharpness():
    for t in TASKS[:20]:
        got = judge(t, blurred(t))
        assert not got.success and got.sharpness < J.THRESHOLDS.min_sharpness, (t.id, got)


def test_measurements_exact_values():
    a = np.zeros((6, 6), dtype=bool)
    a[1:3, 1:3] = True  # 4 px
    b = np.zeros((6, 6), dtype=bool)
    b[2:4, 2:4] = True  # overlaps a in 1 px
    assert J.iou(a, b) == pytest.approx(1 / 7) and J.iou(a, a) == 1.0
    assert J.iou(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert J.dilate(a, 1).sum() == 16 and np.array_equal(J.dilate(a, 0), a)
    two = a | np.pad(np.ones((1, 1), bool), ((5, 0), (5, 0)))  # a 4 px square and one far pixel
    assert J.largest_component(two) == 4 and J.largest_component(np.zeros_like(a)) == 0
    diagonal = np.eye(4, dtype=bool)  # 4-connectivity: diagonal neighbours are apart
    assert J.largest_component(diagonal) == 1
    rgb = np.array([[[220, 40, 40], [200, 60, 60], [128, 128, 128], [40, 80, 220]]], dtype=np.float64)
    assert J.pure_colours(rgb).tolist() == [[0, 0, -1, 2]]  # red, a near red, grey (none), blue
    assert J.psnr_from_mse(255.0**2 / 100) == pytest.approx(20.0) and J.psnr_from_mse(0.0) == J.PSNR_CAP_DB


def test_another_object_recoloured_fails_clean_only():
    t = next(t for t in TASKS if t.others)
    spoiled = np.array(t.target_image.convert("RGB"))
    colour, _, pixels = t.others[0]
    spoiled[pixels] = next(v for k, v in J.OBJECT_COLOURS.items() if k not in (colour, t.target_colour))
    got = judge(t, Image.fromarray(spoiled))
    assert got.success and not got.clean and got.others_iou == 0.0


def test_a_wrong_size_image_is_an_error():
    with pytest.raises(ValueError, match="size"):
        judge(TASKS[0], Image.new("RGB", (32, 32)))


def test_held_out_tasks_are_unambiguous_and_regenerate_from_their_ids():
    """No task's object touches another of its colour (the two would merge), and every task comes back
    from its id alone (the demo's preview judges its rows that way)."""
    assert not any(same_colour_contact(t) for t in TASKS)
    for t in TASKS[:10]:
        again = task_from_id(t.id)
        assert (again.caption, again.query, again.target_colour, again.target_shape) == (
            t.caption,
            t.query,
            t.target_colour,
            t.target_shape,
        )
        assert np.array_equal(np.asarray(again.image), np.asarray(t.image))
    for bad in ("shapes-12-recolor", "coco-1-recolor-0", "shapes-x-recolor-0", "shapes-1-move-0"):
        with pytest.raises(ValueError):
            task_from_id(bad)


def test_the_labels_name_the_calibration_items():
    """Every committed label is of the item ``calibration.items()`` regenerates (task, method, r), and
    the labels were set by the written rule."""
    from benchmarks.quality.calibration import LABELS, items, read_labels

    labels = read_labels()
    chosen = items()
    assert len(labels) == len(chosen) == 168 and (LABELS.parent / "RULE.md").exists()
    for it in chosen:
        lab = labels[it.item]
        assert (lab["task_id"], lab["method"], float(lab["ratio"])) == (it.task.id, it.method, it.ratio)
    assert sum(it.tuning for it in chosen) == 56
    assert {it.task.n_objects for it in chosen} == {1, 2, 3}


@pytest.mark.slow
def test_the_judge_agrees_with_the_labels_as_published():
    """The labelled edits regenerate with the bundled model, and the judge's agreement with the labels
    is what labels/AGREEMENT.md publishes."""
    import re

    import torch

    from benchmarks.quality.calibration import LABELS, agreement, generate, items, read_labels
    from diffedit.loading import load_bundle

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        chosen = items()
        images = generate(load_bundle("models/shapes-v3"), chosen)
    finally:
        torch.set_num_threads(before)
    result = agreement(chosen, images, read_labels())
    published = (LABELS.parent / "AGREEMENT.md").read_text()
    for half in ("tuning", "test"):
        row = re.search(rf"^\| {half} \| (\d+) \| ([\d.]+) \| ([\d.]+) \|", published, re.M)
        assert row is not None and int(row.group(1)) == result[half]["n"]
        assert result[half]["success_agreement"] == pytest.approx(float(row.group(2)), abs=0.02)
        assert result[half]["clean_agreement"] == pytest.approx(float(row.group(3)), abs=0.02)

"""The quality benchmark: its metric functions on hand-made arrays, its runners and outputs on a tiny
model, and a small slice of it on the bundled model with asserted thresholds (a quality regression
fails CI)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.quality import cli, methods, metrics, report, scoring
from benchmarks.quality.ledits import LEDITS_SETTINGS, ledits_pipeline, run_ledits, tiny_ledits_bundle
from diffedit.editor import DiffEditor
from diffedit.reference import deprecated_diffedit_pipeline
from diffedit.shapes.scenes import make_edit_tasks
from diffedit.tiny import tiny_bundle

MODEL = Path("models/shapes-v3")


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: on a busy 2-core machine two threads spin against each
    other and a UNet call gets tens of times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------------- metrics


def test_mask_iou_exact_values():
    m = np.array([[1, 1, 0], [0, 0, 0]], dtype=bool)
    r = np.array([[0, 1, 1], [0, 0, 0]], dtype=bool)
    assert metrics.mask_iou(m, r) == pytest.approx(1 / 3)
    assert metrics.mask_iou(m, m) == 1.0
    assert metrics.mask_iou(m, ~m) == 0.0
    assert metrics.mask_iou(np.zeros((2, 3), bool), np.zeros((2, 3), bool)) == 1.0  # both empty
    with pytest.raises(ValueError, match="shape"):
        metrics.mask_iou(m, r[:, :2])


def test_background_psnr_and_mae_exact_values():
    ref = np.full((4, 4, 3), 100, dtype=np.uint8)
    region = np.zeros((4, 4), dtype=bool)
    region[:2, :2] = True
    edited = ref.copy()
    edited[~region] = 110  # every background value off by 10: MSE 100, MAE 10
    edited[region] = 0  # inside the region: ignored
    assert metrics.background_psnr(edited, ref, region) == pytest.approx(10 * math.log10(255**2 / 100))
    assert metrics.background_mae(edited, ref, region) == pytest.approx(10.0)
    # PIL images give the same numbers as arrays.
    assert metrics.background_psnr(Image.fromarray(edited), Image.fromarray(ref), region) == pytest.approx(
        28.1308036, abs=1e-6
    )
    # One background pixel off by 12 in one channel: MSE = 144 / (12 pixels * 3 channels) = 4.
    one = ref.copy()
    one[3, 3, 0] = 112
    assert metrics.background_psnr(one, ref, region) == pytest.approx(10 * math.log10(255**2 / 4))
    assert metrics.background_mae(one, ref, region) == pytest.approx(12 / 36)
    # An exact copy is capped; no background at all is an error.
    assert metrics.background_psnr(ref, ref, region) == metrics.PSNR_CAP_DB
    with pytest.raises(ValueError, match="whole image"):
        metrics.background_psnr(ref, ref, np.ones((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="region shape"):
        metrics.background_mae(ref, ref, region[:3])


def test_psnr_from_mse():
    assert metrics.psnr_from_mse(255.0**2) == pytest.approx(0.0)
    assert metrics.psnr_from_mse(255.0**2 / 100) == pytest.approx(20.0)
    assert metrics.psnr_from_mse(0.0) == metrics.PSNR_CAP_DB


def test_mask_to_image_nearest_blocks():
    latent = np.array([[1, 0], [0, 1]], dtype=bool)
    img = metrics.mask_to_image(latent, (8, 8))
    expected = np.kron(latent, np.ones((4, 4), dtype=bool))
    assert img.dtype == bool and np.array_equal(img, expected)


def test_latent_grid_iou_exact_values():
    region = np.zeros((8, 8), dtype=bool)
    region[:4, :4] = True  # exactly one 4x4 block
    assert metrics.latent_grid_iou(region, 4) == 1.0
    region[:4, 4:6] = True  # half of the next block: rounded in (IoU 24 / 32)
    assert metrics.latent_grid_iou(region, 4) == pytest.approx(24 / 32)
    region[:4, 4:6] = False
    region[0, 4] = True  # 1/16 of it: rounded out (IoU 16 / 17)
    assert metrics.latent_grid_iou(region, 4) == pytest.approx(16 / 17)
    with pytest.raises(ValueError, match="multiple"):
        metrics.latent_grid_iou(np.zeros((6, 8), bool), 4)


def test_summarise_splits_kinds():
    recs = [
        {
            "kind": "recolor",
            "mask_iou": 0.5,
            "bg_psnr": 30.0,
            "bg_mae": 1.0,
            "success": 1.0,
            "clean_success": 1.0,
            "n_objects": 1,
            "unet_evals": 10,
        },
        {
            "kind": "reshape",
            "mask_iou": 0.3,
            "bg_psnr": 20.0,
            "bg_mae": 3.0,
            "success": 0.0,
            "clean_success": 0.0,
            "n_objects": 3,
            "unet_evals": 10,
        },
    ]
    run = methods.MethodRun("diffedit", 0.7, 25, outputs=[], seconds=4.0, predicts_mask=True)
    row = scoring.summarise(run, recs)
    assert set(row) == set(scoring.SUMMARY_COLUMNS)
    assert (row["n"], row["n_recolor"], row["n_reshape"]) == (2, 1, 1)
    assert (row["mask_iou_recolor"], row["mask_iou_reshape"], row["mask_iou"]) == (0.5, 0.3, 0.4)
    assert (row["bg_psnr"], row["success"], row["success_recolor"]) == (25.0, 0.5, 1.0)
    assert row["edits_per_s"] == 0.5
    assert (row["n_1obj"], row["n_2obj"], row["n_3obj"]) == (1, 0, 1)
    assert (row["success_1obj"], row["success_3obj"], row["clean_success"]) == (1.0, 0.0, 0.5)
    assert math.isnan(row["success_2obj"])
    assert math.isnan(
        scoring.summarise(methods.MethodRun("vae_recon", math.nan, 0, [], 1.0), recs)["edits_per_s"]
    )


# ----------------------------------------------------------------------------------- runners (tiny model)


def test_runners_output_shapes_on_tiny_model(one_thread):
    bundle = tiny_bundle(seed=0)
    tasks = make_edit_tasks(0, 2, size=32)
    editor = DiffEditor(bundle, max_batch=8)
    for variant in methods.OURS:
        run, results = methods.run_ours(editor, tasks, 0.5, 4, variant)
        assert len(run.outputs) == 2 and run.seconds > 0
        for out in run.outputs:
            assert out.image.size == (32, 32) and out.image.mode == "RGB"
            assert out.mask_binary.shape == (32, 32) and out.mask_binary.dtype == bool
            assert out.mask_soft.shape == (32, 32)
            assert out.unet_evals > 0
        if variant == "diffedit_no_mask":
            assert all(o.mask_binary.all() for o in run.outputs)
        if variant == "diffedit_gt_mask":  # the given region, dilated to the latent grid
            assert all((o.mask_binary | ~t.region).all() for o, t in zip(run.outputs, tasks, strict=True))
        if variant == "diffedit_empty_ref":  # the RQ5 ablation: empty reference text, paper recipe
            assert all(r.params.mask_threshold == 0.5 for r in results)
        if variant == "diffedit":
            pasted = methods.paste_run(run, results, tasks)
            assert [o.image.size for o in pasted.outputs] == [(32, 32)] * 2
    pipe = deprecated_diffedit_pipeline(bundle)
    run = methods.run_diffusers(pipe, tasks, 0.5, 4, max_batch=2)
    assert [o.image.size for o in run.outputs] == [(32, 32)] * 2
    assert all(o.mask_binary.shape == (32, 32) for o in run.outputs)
    # 4 steps: mask 4 x 10 maps; invert and decode 2 steps each, with CFG: 40 + 4 + 4.
    assert run.outputs[0].unet_evals == 48
    recon = methods.run_vae_recon(bundle, tasks, max_batch=2)
    assert [o.image.size for o in recon.outputs] == [(32, 32)] * 2


def test_ledits_runs_on_a_tiny_model_seeded(one_thread):
    """LEDITS++ on a tiny model: images at the input's size, its UNet evaluations counted, and the
    same seed gives the same image."""
    bundle = tiny_ledits_bundle(seed=0)
    tasks = make_edit_tasks(0, 1, size=32)
    pipe = ledits_pipeline(bundle)
    images, evals, seconds = run_ledits(pipe, tasks, 0.5, 4)
    again, _, _ = run_ledits(pipe, tasks, 0.5, 4)
    assert images[0].size == (32, 32) and images[0].mode == "RGB" and seconds > 0
    assert np.array_equal(np.asarray(images[0]), np.asarray(again[0]))
    assert evals[0] > 0 and LEDITS_SETTINGS["edit_guidance_scale"] > 0
    with pytest.raises(ValueError, match="ratio"):
        run_ledits(pipe, tasks, 0.0, 4)


def test_benchmark_command_on_tiny_model(tmp_path, one_thread):
    """The command end to end on a tiny random model: every file, every row, the CSV columns, the
    forced 3-object slice."""
    out = tmp_path / "q"
    argv = ["--tiny", "--tasks", "2", "--size", "32", "--ratios", "0.5", "0.7", "--steps", "3"]
    argv += ["--default-steps", "4", "--max-batch", "8", "--threads", "0", "--out", str(out)]
    argv += ["--three-object-tasks", "1", "--three-object-methods", "diffedit", "ledits"]
    assert cli.main(argv) == 0
    for name in ("results.csv", "tasks.csv", "tradeoff.png", "contact_sheet.png", "meta.json"):
        assert (out / name).stat().st_size > 0, name
    with (out / "results.csv").open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == scoring.SUMMARY_COLUMNS
        rows = list(reader)
    main = [r for r in rows if r["slice"] == "all"]
    keys = [(r["method"], r["ratio"], r["steps"]) for r in main]
    assert keys[:2] == [("vae_recon", "", "0"), ("target_render", "", "0")]
    for ratio in ("0.5000", "0.7000"):
        for method in methods.METHODS:
            if method not in methods.ONE_RATIO_METHODS or ratio == "0.7000":
                assert (method, ratio, "3") in keys
    assert ("diffedit", "0.7000", "4") in keys and ("diffedit_paste", "0.7000", "4") in keys
    assert ("diffedit_empty_ref", "0.5000", "3") not in keys
    assert len(main) == 2 + 2 * len(methods.METHODS) - len(methods.ONE_RATIO_METHODS) + 2
    assert all(r["n"] == "2" for r in main)
    three = [
        (r["method"], r["ratio"], r["n"], r["n_3obj"]) for r in rows if r["slice"] == "three_object_recolor"
    ]
    assert three == [("diffedit", "0.7000", "1", "1"), ("ledits", "0.7000", "1", "1")]
    with (out / "tasks.csv").open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == scoring.TASK_COLUMNS
        assert len(list(reader)) == 2 * len(main) + 2
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tasks"] == 2 and meta["scene_seeds"][0] >= 1_000_000_000
    assert meta["three_object_tasks"] == 1 and meta["three_object_scene_seeds"][0] >= 1_000_000_000


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown method"):
        cli.run_benchmark(None, [], [0.7], methods=["magic"])  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- the bundled model

#: The in-suite slice: 16 held-out recolour tasks (stream 0: 1, 2 and 3-object scenes) and 8 forced
#: 3-object recolour tasks (stream 1000, the benchmark's 3-object slice), r = 0.7, 25 DDIM steps (the
#: benchmark's), ours at its defaults otherwise, judged by the strict judge. Measured on models/shapes-v3
#: (CPU, float32, torch 1 thread): mask IoU 0.659, strict success 8/24, strict clean 6/24, 3-object
#: recolours 4/8, background PSNR 26.86 dB (the 3-object scenes pull it down), about 20 s of CPU. On
#: shapes-v2 the same slice gives 0.587, 3/24, 3/24, 2/8 and 27.20 dB: every threshold but the
#: background's fails it. The thresholds sit one or two edits below v3's, so that a regression fails
#: while float noise across machines (a mask pixel or an edit flipping) does not.
SLICE_TASKS = 16
SLICE_THREE_OBJECT_TASKS = 8
SLICE_RATIO = 0.7
SLICE_STEPS = 25
SLICE_MIN_IOU = 0.62
SLICE_MIN_SUCCESS = 0.25  # 6 of 24
SLICE_MIN_CLEAN = 0.20  # 5 of 24 (4.8)
SLICE_MIN_THREE_OBJECT_SUCCESS = 0.375  # 3 of 8
SLICE_MIN_BG_PSNR = 26.5


@pytest.mark.skipif(not (MODEL / "model_index.json").exists(), reason="the bundled model is not there")
def test_quality_slice_on_bundled_model(one_thread):
    """A slice of the benchmark on the bundled model, multi-object scenes included, so that a quality
    regression fails CI.

    The figures are the model's; the quality targets are judged on the full benchmark (200 tasks), not
    on this slice.
    """
    from diffedit.loading import load_bundle

    bundle = load_bundle(str(MODEL))
    tasks = make_edit_tasks(0, SLICE_TASKS, kinds=("recolor",))
    tasks += make_edit_tasks(1000, SLICE_THREE_OBJECT_TASKS, kinds=("recolor",), n_objects=3)
    assert {t.n_objects for t in tasks} == {1, 2, 3}
    run, _ = methods.run_ours(DiffEditor(bundle, max_batch=64), tasks, SLICE_RATIO, SLICE_STEPS, "diffedit")
    records = scoring.score_run(run, tasks)
    row = scoring.summarise(run, records)
    three = metrics.mean_of([r["success"] for r in records[SLICE_TASKS:]])
    print(report.format_table([row]), f"\n3-object recolour success {three:.3f}")
    assert row["n_recolor"] == SLICE_TASKS + SLICE_THREE_OBJECT_TASKS
    assert row["mask_iou_recolor"] >= SLICE_MIN_IOU
    assert row["success"] >= SLICE_MIN_SUCCESS
    assert row["clean_success"] >= SLICE_MIN_CLEAN
    assert three >= SLICE_MIN_THREE_OBJECT_SUCCESS
    assert row["bg_psnr"] >= SLICE_MIN_BG_PSNR


#: The same slice on models/shapes-v3-flow (shapes-v3 fine-tuned with the rectified-flow objective, issue
#: 18): measured mask IoU 0.706, strict success 9/24, clean 7/24, 3-object recolours 3/8, background
#: 27.37 dB (CPU, float32, 1 thread, about 20 s). Thresholds one or two edits below.
FLOW_MODEL = Path("models/shapes-v3-flow")
FLOW_SLICE_MIN_IOU = 0.66
FLOW_SLICE_MIN_SUCCESS = 0.29  # 7 of 24
FLOW_SLICE_MIN_CLEAN = 0.20  # 5 of 24
FLOW_SLICE_MIN_THREE_OBJECT_SUCCESS = 0.25  # 2 of 8
FLOW_SLICE_MIN_BG_PSNR = 27.0


def test_quality_slice_on_the_flow_trained_model(one_thread):
    """The flow path edits with a model trained as a flow model: shapes-v3-flow loads as a velocity model
    on the flow grid (not through the DDIM path) and passes the slice's thresholds."""
    from diffedit.loading import load_bundle

    bundle = load_bundle(str(FLOW_MODEL))
    assert bundle.prediction_type == "flow" and bundle.levels(SLICE_STEPS).kind == "flow"
    tasks = make_edit_tasks(0, SLICE_TASKS, kinds=("recolor",))
    tasks += make_edit_tasks(1000, SLICE_THREE_OBJECT_TASKS, kinds=("recolor",), n_objects=3)
    run, _ = methods.run_ours(DiffEditor(bundle, max_batch=64), tasks, SLICE_RATIO, SLICE_STEPS, "diffedit")
    records = scoring.score_run(run, tasks)
    row = scoring.summarise(run, records)
    three = metrics.mean_of([r["success"] for r in records[SLICE_TASKS:]])
    print(report.format_table([row]), f"\n3-object recolour success {three:.3f}")
    assert row["mask_iou_recolor"] >= FLOW_SLICE_MIN_IOU
    assert row["success"] >= FLOW_SLICE_MIN_SUCCESS
    assert row["clean_success"] >= FLOW_SLICE_MIN_CLEAN
    assert three >= FLOW_SLICE_MIN_THREE_OBJECT_SUCCESS
    assert row["bg_psnr"] >= FLOW_SLICE_MIN_BG_PSNR

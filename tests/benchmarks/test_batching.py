"""benchmarks.batching: its call arithmetic is the editor's (a hook on a real DiffEditor's decode calls
counts the same samples per call), and on the COCO-like mix the job's grouping fills >= 90 % of
max_batch per decode call where the batches as read fill < 30 %."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch
from PIL import Image

from benchmarks.batching import (
    coco_like_sizes,
    decode_calls_measured,
    editor_calls,
    fullness,
    keys_of,
    scenarios,
)
from diffedit.editor import DiffEditor, EditRequest
from diffedit.params import EditParams
from diffedit.tiny import tiny_bundle
from pipeline.grouping import stream_chunks
from pipeline.sizing import Geometry

PARAMS = EditParams.from_dict({"num_inference_steps": 4, "num_mask_draws": 1})


def test_simulated_decode_calls_are_the_editors():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bundle = tiny_bundle(0)
        max_batch, batch_size = 4, 3
        editor = DiffEditor(bundle, PARAMS, max_batch=max_batch)
        geometry = Geometry(bundle.family, bundle.native_size, bundle.pixel_multiple)
        sizes = [(64, 48), (48, 64), (64, 48), (64, 64), (64, 48), (48, 64), (64, 48)]
        keys = keys_of(sizes, geometry)
        assert len(set(keys)) == 3
        rng = np.random.default_rng(0)
        requests = [
            EditRequest(Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)), "q", seed=i)
            for i, (w, h) in enumerate(sizes)
        ]
        for window in (0, 7):  # as read, then grouped in one window
            calls = stream_chunks(keys, window, batch_size)  # the rows of each editor call
            measured = decode_calls_measured(editor, [[requests[i] for i in call] for call in calls])
            simulated = editor_calls(keys, window=window, batch_size=batch_size)
            assert simulated == [[keys[i] for i in call] for call in calls]
            per_step = [
                min(max_batch, 2 * n - j)
                for call in simulated
                for n in Counter(call).values()
                for j in range(0, 2 * n, max_batch)
            ]
            steps = PARAMS.num_encode_steps
            assert Counter(measured) == Counter({k: v * steps for k, v in Counter(per_step).items()})
            f = fullness(simulated, max_batch)
            assert math.isclose(f.decode, sum(measured) / (len(measured) * max_batch))
    finally:
        torch.set_num_threads(before)


def test_grouping_fills_decode_calls_on_a_coco_like_mix():
    results = {(r["model"], r["scenario"].split(":")[0], r["scenario"]): r for r in scenarios(4000, seed=1)}
    for model in ("SD 1.5, 512 px", "SDXL, 1024 px"):
        rows = [r for (m, _, _), r in results.items() if m == model]
        before = [r for r in rows if r["scenario"].startswith("before")]
        after = [r for r in rows if r["scenario"] == "after: the plan, grouped in the actor's window"]
        assert all(r["decode"] < 0.3 for r in before)
        assert len(after) == 1 and after[0]["decode"] >= 0.9 and after[0]["buckets_per_call"] == 1.0
        assert 0 < after[0]["decode_samples_per_call"] <= after[0]["max_batch"]


def test_coco_like_sizes_follow_their_shares():
    sizes = coco_like_sizes(20_000, seed=3, failed=0.01)
    counts = Counter(sizes)
    assert abs(counts[(640, 480)] / 20_000 - 0.46) < 0.02 and abs(counts[None] / 20_000 - 0.01) < 0.005

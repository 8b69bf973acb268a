"""Rows grouped by model resolution within a bounded window (pipeline.grouping): the fetch stage's key,
each window's chunks (one resolution each, at most batch_size rows, every ok row in exactly one, failed
rows in none, nothing crossing a window), and the model stage editing a window chunk by chunk."""

from __future__ import annotations

import pyarrow as pa
from pipeline_testing import FAST_PARAMS, png_bytes

from diffedit.params import EditParams
from pipeline import rows as R
from pipeline.config import ImagesConfig, StorageConfig
from pipeline.grouping import chunks, stream_chunks, window_order
from pipeline.sizing import Geometry
from pipeline.stages import edit_rows, fetch_rows

FETCH = {"params": EditParams.from_dict(FAST_PARAMS), "images": ImagesConfig(), "storage": StorageConfig()}


def test_fetch_gives_each_ok_row_its_model_resolution():
    rows = [
        {"id": "wide", "image_bytes": png_bytes(1, (640, 480)), "query": "q"},
        {"id": "tall", "image_bytes": png_bytes(2, (480, 640)), "query": "q"},
        {"id": "bad", "image_bytes": b"not an image", "query": "q"},
    ]
    batch = pa.Table.from_pylist(rows)
    got = {r["id"]: r for r in fetch_rows(batch, geometry=Geometry("sd", 512, 64), **FETCH).to_pylist()}
    assert (got["wide"]["model_width"], got["wide"]["model_height"]) == (512, 384)
    assert (got["tall"]["model_width"], got["tall"]["model_height"]) == (384, 512)
    assert got["bad"]["status"] == R.FAILED and got["bad"]["model_width"] is None
    plain = fetch_rows(batch, **FETCH).to_pylist()  # no geometry: no key
    assert all(r["model_width"] is None for r in plain)


def test_window_order_full_chunks_first_then_remainders_then_failed():
    keys = ["a", "b", "a", None, "a", "c", "b", "a", "a", "b"]
    order = window_order(keys, batch_size=2)
    assert sorted(order) == list(range(len(keys)))  # a permutation
    assert [keys[i] for i in order] == ["a", "a", "a", "a", "b", "b", "a", "b", "c", None]
    assert order[:4] == [0, 2, 4, 7]  # within a resolution, the window's own order


def test_chunks_are_single_key_bounded_and_cover_every_ok_row_once():
    keys = ["a", "b", "a", None, "a", "c", "b", "a", "a", "b"]
    got = chunks(keys, batch_size=2)
    assert got == [[0, 2], [4, 7], [8], [1, 6], [9], [5]]  # a (5 rows), b (3), c (1); the failed row: none


def test_stream_windows_are_bounded_and_every_row_appears_once():
    keys = [("w", "t", "s")[i * 7 % 3] if i % 11 else None for i in range(103)]
    calls = stream_chunks(keys, window=16, batch_size=4)
    flat = [i for c in calls for i in c]
    assert sorted(flat) == [i for i, k in enumerate(keys) if k is not None]  # each ok row once
    for c in calls:
        assert len(c) <= 4 and len({keys[i] for i in c}) == 1  # one resolution, at most a batch
        assert len({i // 16 for i in c}) == 1  # never across a window
    # at most one part-full chunk per resolution per window
    part = [c for c in calls if len(c) < 4]
    assert len(part) <= 3 * 7
    as_read = stream_chunks(keys, window=0, batch_size=4)  # off: consecutive batches of 4
    assert as_read[0] == [1, 2, 3] and as_read[1] == [4, 5, 6, 7]


class Recording:
    """A fake editor recording the ids of every call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def validate(self, request) -> None:
        pass

    def edit(self, requests):
        from PIL import Image

        from diffedit.editor import EditResult

        self.calls.append([r.id for r in requests])
        out = []
        for r in requests:
            w, h = r.image.size
            out.append(
                EditResult(
                    id=r.id, image=r.image, mask_soft=Image.new("L", (w, h)), mask_binary=Image.new("L", (w, h)),
                    mask_soft_latent=None, mask_binary_latent=None, mask_area=0.0, params=r.params, seed=r.seed,
                    width=w, height=h, model_width=w, model_height=h, input_latent=None, latent=None,
                    counters={"unet_evals": 1},
                )
            )  # fmt: skip
        return out


def test_the_model_stage_edits_a_window_chunk_by_chunk_in_the_batch_order():
    sizes = [(640, 480), (480, 640), (640, 480), None, (640, 480), (480, 640), (640, 480)]
    rows = [
        {"id": f"r{i}", "query": "q"} | ({"image_bytes": png_bytes(i, s)} if s else {"image_bytes": b"x"})
        for i, s in enumerate(sizes)
    ]
    fetched = fetch_rows(pa.Table.from_pylist(rows), geometry=Geometry("sd", 512, 64), **FETCH)
    editor = Recording()
    out = edit_rows(fetched, editor, "m", "h", chunk_size=2)
    assert editor.calls == [["r0", "r2"], ["r4", "r6"], ["r1", "r5"]]
    assert out.column("id").to_pylist() == [f"r{i}" for i in range(7)]  # the batch's order, each once
    statuses = out.column("status").to_pylist()
    assert statuses[3] == R.FAILED and statuses.count(R.OK) == 6
    editor = Recording()
    edit_rows(fetched, editor, "m", "h")  # no chunk size: one call, as read
    assert editor.calls == [["r0", "r1", "r2", "r4", "r5", "r6"]]

"""Rows grouped by model resolution within a bounded window, so that UNet calls are full (issue 19).

``DiffEditor`` edits a batch bucket by bucket, one bucket per model resolution (``diffedit.editor``):
a batch that mixes aspect ratios fragments into small UNet calls (on a COCO-like mix, a 16-row batch
holds ~5 resolutions). The fetch stage gives each ok row its model resolution (``model_width``,
``model_height``: ``diffedit.images.model_resolution`` at the model's native size and pixel multiple,
``pipeline.sizing.Geometry``). With ``compute.group_window`` > 0 the model actors take windows of that
many rows (Ray Data's ``map_batches`` batch size: streaming, memory bounded by a few windows per
actor) and edit each window in ``chunks``: one call of ``DiffEditor.edit`` per chunk of at most
``batch_size`` rows of one resolution, so each resolution leaves at most one part-full call per
window. Failed rows are in no chunk and pass through; every row is returned once, in the window's order.

Why in the actor's window and not by reordering rows before the actors: Ray Data cuts the actors'
batches from whole blocks (a bundle of blocks, then consecutive slices of ``batch_size`` rows), and it
splits a task's output into blocks by bytes (``target_max_block_size``, 128 MiB: ~136 decoded
640x480 images), so a reordered window reaches the actors in slices that no longer line up with its
runs of one resolution: simulated on a COCO-like mix, half a batch of shift takes decode calls from
84 % to 70 % full (``python -m benchmarks.batching``); chunking inside the window depends on no block
boundary.

``chunks`` orders resolutions by their row count in the window (largest first, ties by size), and
within a resolution keeps the window's order; ``window_order`` is the same order as one permutation.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence


def window_order(keys: Sequence[Hashable | None], batch_size: int) -> list[int]:
    """The order (indices into ``keys``) of one window's rows: the module docstring's rule; ``None``
    keys (failed rows) last."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[Hashable, list[int]] = {}
    failed: list[int] = []
    for i, key in enumerate(keys):
        if key is None:
            failed.append(i)
        else:
            groups.setdefault(key, []).append(i)
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), str(kv[0])))
    full: list[int] = []
    rest: list[int] = []
    for _, rows in ordered:
        cut = len(rows) - len(rows) % batch_size
        full += rows[:cut]
        rest += rows[cut:]
    return full + rest + failed


def chunks(keys: Sequence[Hashable | None], batch_size: int) -> list[list[int]]:
    """One window's editor calls: row indices into ``keys``, each chunk at most ``batch_size`` rows of
    one key; ``None`` keys (failed rows) are in none."""
    order = window_order(keys, batch_size)
    runs: dict[Hashable, list[int]] = {}
    for i in order:
        if keys[i] is not None:
            runs.setdefault(keys[i], []).append(i)
    return [rows[j : j + batch_size] for rows in runs.values() for j in range(0, len(rows), batch_size)]


def stream_chunks(keys: Sequence[Hashable | None], window: int, batch_size: int) -> list[list[int]]:
    """What the job does to a stream of rows, without Ray: windows of ``window`` rows, each cut into
    ``chunks``; ``window`` 0 (no grouping): the stream as read, in batches of ``batch_size`` rows (one
    editor call each, failed rows left out)."""
    if window <= 0:
        batches = [range(s, min(s + batch_size, len(keys))) for s in range(0, len(keys), batch_size)]
        return [[i for i in b if keys[i] is not None] for b in batches]
    out: list[list[int]] = []
    for start in range(0, len(keys), window):
        part = keys[start : start + window]
        out += [[start + i for i in chunk] for chunk in chunks(part, batch_size)]
    return [c for c in out if c]

"""Section ``compare``: ours and diffusers' pipeline over the same rows, interleaved batch by batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.perf.methods import DiffusersRunner, OursRunner
from benchmarks.perf.rows import BenchRow, chunks
from benchmarks.perf.timing import ModelTimer
from diffedit.bundle import ModelBundle
from diffedit.params import EditParams
from diffedit.reference import deprecated_diffedit_pipeline


def run_compare(
    bundle: ModelBundle,
    rows: Sequence[BenchRow],
    params: EditParams,
    *,
    batch: int,
    max_batch: int,
    warmup: bool = True,
    methods: Sequence[str] = ("ours", "diffusers"),
    repeats: int = 1,
) -> dict[str, Any]:
    """Ours and diffusers' pipeline over the same rows, batch by batch, interleaved, ``repeats``
    passes. Each batch of one method runs next to the same batch of the other, so the ratio of a
    pair of batches is taken under the same background load; their median is robust to load spikes
    that the ratio of total times is not."""
    pipe = deprecated_diffedit_pipeline(bundle) if "diffusers" in methods else None
    with ModelTimer(bundle) as timer:

        def runners() -> dict[str, Any]:
            made: dict[str, Any] = {}
            if "ours" in methods:
                made["ours"] = OursRunner(bundle, params, max_batch, timer)
            if pipe is not None:
                made["diffusers"] = DiffusersRunner(pipe, params, timer)
            return made

        if warmup:
            for runner in runners().values():
                runner.run_batch(rows[:batch])
        timed = runners()
        order = list(timed.values())
        i = 0
        for _ in range(repeats):
            for runner in order:
                runner.new_pass()
            for chunk in chunks(rows, batch):
                for runner in order if i % 2 == 0 else order[::-1]:
                    runner.run_batch(chunk)
                i += 1
    out: dict[str, Any] = {
        "rows": len(rows),
        "repeats": repeats,
        "batch": batch,
        "max_batch": max_batch,
        "warmup": warmup,
    }
    for name, runner in timed.items():
        out[name] = runner.stats.summary()
    if "ours" in out and "diffusers" in out:
        ours, theirs = out["ours"], out["diffusers"]
        paired = [
            t / o
            for o, t in zip(
                timed["ours"].stats.batch_seconds, timed["diffusers"].stats.batch_seconds, strict=True
            )
        ]
        out["ratio"] = {
            "edits_per_s_paired_median": float(np.median(paired)),
            "edits_per_s_paired": paired,
            "edits_per_s": _ratio(ours["edits_per_s"], theirs["edits_per_s"]),
            "edits_per_s_excl_io": _ratio(ours["edits_per_s_excl_io"], theirs["edits_per_s_excl_io"]),
            "unet_evals_per_edit_theirs_over_ours": _ratio(
                theirs["unet_evals_per_edit"], ours["unet_evals_per_edit"]
            ),
        }
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None

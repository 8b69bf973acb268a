"""Queries per image: what sharing the VAE encode and the inversion saves, counted and timed side by side.

    python -m benchmarks.perf.shared [--model models/shapes-v3] [--rows 16] [--repeats 3]

For Q in 1, 2, 4, 8: ``--rows`` rows made of rows/Q images with Q queries each (Q = 1: every row its own
image) are edited by a fresh ``DiffEditor`` (no trajectory kept between runs) at the defaults (50 steps,
r 0.8, n 10, guidance 7.5). Printed per Q: UNet evaluations per row (counted: 20 + 40/Q + 80), seconds
per row (median over ``--repeats`` rounds, the Q settings interleaved within each round so that load on
this shared machine hits them alike), and the gain over Q = 1 as a ratio, counted and timed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import numpy as np

QUERIES = ("a red", "a green", "a yellow", "a purple", "a white", "a black", "an orange", "a pink")


def requests_for(tasks: Sequence[object], q: int, rows: int) -> list[object]:
    """``rows`` requests: rows / q images (the tasks' inputs), each with q queries (its own first)."""
    from diffedit.editor import EditRequest

    out = []
    for i in range(rows // q):
        task = tasks[i]
        shape = task.query.split()[-1]  # "a blue circle" -> "circle"
        queries = [task.query] + [f"{c} {shape}" for c in QUERIES if f"{c} {shape}" != task.query]
        out += [
            EditRequest(task.image, queries[k], task.caption, seed=int(task.seed) + k, id=f"{i}-{k}")
            for k in range(q)
        ]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    from diffedit.editor import DiffEditor
    from diffedit.loading import load_bundle
    from diffedit.shapes.scenes import make_edit_tasks

    p = argparse.ArgumentParser(prog="python -m benchmarks.perf.shared", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="models/shapes-v3")
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-batch", type=int, default=64)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    bundle = load_bundle(args.model)
    tasks = [t for t in make_edit_tasks(0, 4 * args.rows) if t.kind == "recolor"]
    settings = (1, 2, 4, 8)
    seconds: dict[int, list[float]] = {q: [] for q in settings}
    evals: dict[int, float] = {}
    for _ in range(args.repeats):
        for q in settings:
            requests = requests_for(tasks, q, args.rows)
            editor = DiffEditor(bundle, max_batch=args.max_batch, trajectory_cache=0)
            start = time.perf_counter()
            results = editor.edit(requests)
            seconds[q].append((time.perf_counter() - start) / len(results))
            evals[q] = float(np.mean([r.counters["unet_evals"] for r in results]))
    base_s, base_e = statistics.median(seconds[1]), evals[1]
    print(f"{args.rows} rows per setting, {args.repeats} interleaved rounds, one torch thread, {args.model}")
    print("| queries per image | UNet evals / row | gain (counted) | s / row (median) | gain (timed) |")
    print("|---:|---:|---:|---:|---:|")
    for q in settings:
        s = statistics.median(seconds[q])
        print(f"| {q} | {evals[q]:.0f} | {base_e / evals[q]:.2f}x | {s:.3f} | {base_s / s:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

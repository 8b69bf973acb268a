"""How full the UNet calls are on a mixed-aspect manifest, before and after regrouping (issue 19).

``python -m benchmarks.batching`` prints, per scenario, the mean samples per UNet call of each DiffEdit
step as a fraction of ``max_batch``, on a COCO-like mix of aspect ratios; no GPU and no model needed:

1. ``coco_like_sizes``: image sizes drawn from ``ASPECTS``, COCO-like shares of aspect ratios
   (approximate shares of COCO train2017's image sizes, 640 px on the long side; not read from the
   dataset), plus a share of failed rows (they pass through the actors);
2. each row's model resolution (``diffedit.images.model_resolution``, the editor's own rule) is its key;
3. the editor calls: as read, consecutive batches of ``batch_size`` rows; grouped, windows of
   ``group_window`` rows each cut into chunks of one resolution (``pipeline.grouping.stream_chunks``,
   what the job's actors do); and, for comparison, the window reordered *before* the actors
   (``pipeline.grouping.window_order``) and then cut into slices of ``batch_size`` rows by Ray Data,
   aligned or shifted by half a batch (when Ray Data's blocks do not line up with the windows);
4. per editor call, ``DiffEditor``'s buckets (one per model resolution), and per bucket the UNet calls each
   step makes (``diffedit.modelcall.call_eps`` cuts a step's samples into calls of ``max_batch``):
   decode 2 samples per row (the query and the negative prompt), mask 2 x draws per row, inversion 1.

``decode_calls_measured`` counts the same thing on a real ``DiffEditor`` (a hook on the decode step's
``call_eps``); ``tests/benchmarks/test_batching.py`` checks that both agree.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from diffedit.images import model_resolution
from pipeline.grouping import stream_chunks, window_order
from pipeline.sizing import GROUP_BATCHES, Geometry, batching

#: (name, (width, height), share): COCO-like aspect ratios at COCO's 640 px long side.
ASPECTS: tuple[tuple[str, tuple[int, int], float], ...] = (
    ("4:3", (640, 480), 0.46),
    ("3:2", (640, 427), 0.18),
    ("3:4", (480, 640), 0.12),
    ("2:3", (427, 640), 0.08),
    ("1:1", (640, 640), 0.08),
    ("16:9", (640, 360), 0.05),
    ("9:16", (360, 640), 0.03),
)
SD15, SDXL = Geometry("sd", 512, 64), Geometry("sdxl", 1024, 32)


def coco_like_sizes(n: int, seed: int = 0, failed: float = 0.01) -> list[tuple[int, int] | None]:
    """``n`` image sizes drawn from ``ASPECTS`` (None: a row that failed in the fetch stage)."""
    rng = random.Random(seed)
    sizes = [size for _, size, _ in ASPECTS]
    weights = [share for _, _, share in ASPECTS]
    return [None if rng.random() < failed else rng.choices(sizes, weights)[0] for _ in range(n)]


def keys_of(sizes: Sequence[tuple[int, int] | None], geometry: Geometry) -> list[Hashable | None]:
    """Each row's model resolution (the regrouping key), None for failed rows."""
    return [
        None if s is None else model_resolution(s[0], s[1], geometry.native_size, geometry.pixel_multiple)
        for s in sizes
    ]


def editor_calls(
    keys: Sequence[Hashable | None], *, window: int, batch_size: int
) -> list[list[Hashable | None]]:
    """The keys of each ``DiffEditor.edit`` call the job makes (``pipeline.grouping.stream_chunks``)."""
    return [[keys[i] for i in chunk] for chunk in stream_chunks(keys, window, batch_size)]


def reordered_slices(
    keys: Sequence[Hashable | None], *, window: int, batch_size: int, offset: int = 0
) -> list[list[Hashable | None]]:
    """The alternative the job does not take: each window reordered (``window_order``) before the
    actors, whose batches are then consecutive slices of ``batch_size`` rows (the first ``offset`` rows
    alone, as a batch Ray Data's blocks cut short)."""
    stream = []
    for start in range(0, len(keys), window):
        part = keys[start : start + window]
        stream += [part[i] for i in window_order(part, batch_size)]
    cuts = [0, offset] if offset else [0]
    cuts += range(cuts[-1] + batch_size, len(stream), batch_size)
    cuts.append(len(stream))
    return [stream[a:b] for a, b in itertools.pairwise(cuts) if b > a]


@dataclass(frozen=True)
class Fullness:
    """Mean samples per UNet call of each step, as a fraction of ``max_batch``."""

    buckets_per_call: float  # DiffEditor's buckets (model resolutions) per editor call
    decode_samples_per_call: float
    decode: float  # decode_samples_per_call / max_batch
    mask: float
    encode: float


def fullness(batches: Sequence[Sequence[Hashable | None]], max_batch: int, mask_draws: int = 10) -> Fullness:
    """Per batch, one bucket per key (failed rows skipped); per bucket and step, the samples and the
    calls ``call_eps`` makes of them: decode 2 per row, mask 2 x ``mask_draws``, inversion 1."""
    samples = Counter[str]()
    calls = Counter[str]()
    buckets = 0
    for batch in batches:
        sizes = Counter(k for k in batch if k is not None)
        buckets += len(sizes)
        for n in sizes.values():
            for step, per_row in (("decode", 2), ("mask", 2 * mask_draws), ("encode", 1)):
                samples[step] += per_row * n
                calls[step] += math.ceil(per_row * n / max_batch)

    def frac(step: str) -> float:
        return samples[step] / (calls[step] * max_batch) if calls[step] else 0.0

    return Fullness(
        buckets_per_call=buckets / max(1, len(batches)),
        decode_samples_per_call=samples["decode"] / max(1, calls["decode"]),
        decode=frac("decode"),
        mask=frac("mask"),
        encode=frac("encode"),
    )


def decode_calls_measured(editor: Any, batches: Sequence[Sequence[Any]]) -> list[int]:
    """The sample count of every UNet call the decode step makes when ``editor`` (a ``DiffEditor``)
    edits each of ``batches`` (lists of ``EditRequest``), one call of ``edit`` per batch."""
    import diffedit.decode as decode

    sizes: list[int] = []
    original = decode.call_denoiser

    def counting(fn, latents, *args, **kwargs):  # type: ignore[no-untyped-def]
        def denoise(x, *rest):  # type: ignore[no-untyped-def]
            sizes.append(int(x.shape[0]))
            return fn(x, *rest)

        return original(denoise, latents, *args, **kwargs)

    decode.call_denoiser = counting
    try:
        for batch in batches:
            editor.edit(list(batch))
    finally:
        decode.call_denoiser = original
    return sizes


def scenarios(rows: int, seed: int) -> list[dict[str, Any]]:
    """The figures of every scenario (module docstring)."""
    from pipeline.config import ComputeConfig

    out = []
    for label, geometry in (("SD 1.5, 512 px", SD15), ("SDXL, 1024 px", SDXL)):
        keys = keys_of(coco_like_sizes(rows, seed), geometry)
        plan = batching(ComputeConfig(device="cuda", gpus_per_actor=1), geometry)
        b, m, w = plan.batch_size, plan.max_batch, plan.group_window
        cases = [
            (
                "before: gpu preset 16 rows / 32 samples, as read",
                editor_calls(keys, window=0, batch_size=16),
                16,
                32,
                0,
            ),
            ("before: the plan's sizes, as read", editor_calls(keys, window=0, batch_size=b), b, m, 0),
            (
                "after: the plan, grouped in the actor's window",
                editor_calls(keys, window=w, batch_size=b),
                b,
                m,
                w,
            ),
            (
                "after: a window of 32 batches",
                editor_calls(keys, window=32 * b, batch_size=b),
                b,
                m,
                32 * b,
            ),
            (
                "not taken: reordered before the actors, slices aligned",
                reordered_slices(keys, window=w, batch_size=b),
                b,
                m,
                w,
            ),
            (
                "not taken: reordered before the actors, slices shifted by half a batch",
                reordered_slices(keys, window=w, batch_size=b, offset=b // 2),
                b,
                m,
                w,
            ),
        ]
        for name, calls, b_, m_, window in cases:
            out.append(
                {
                    "model": label,
                    "scenario": name,
                    "batch_size": b_,
                    "max_batch": m_,
                    "group_window": window,
                    "resolutions": len({k for k in keys if k is not None}),
                    **asdict(fullness(calls, m_)),
                }
            )
    return out


def table(results: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| model | scenario | rows/call | max_batch | window | buckets/call | decode samples/call "
        "| decode | mask | inversion |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['scenario']} | {r['batch_size']} | {r['max_batch']} | {r['group_window']} "
            f"| {r['buckets_per_call']:.2f} | {r['decode_samples_per_call']:.1f} | {r['decode']:.1%} "
            f"| {r['mask']:.1%} | {r['encode']:.1%} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    results = scenarios(args.rows, args.seed)
    mix = ", ".join(f"{name} {share:.0%}" for name, _, share in ASPECTS)
    print(f"{args.rows} rows, aspect mix {mix}, 1 % failed; window default {GROUP_BATCHES} batches")
    print(table(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

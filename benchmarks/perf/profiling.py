"""cProfile of ours, run once more untimed."""

from __future__ import annotations

import cProfile
import pstats
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.perf.rows import BenchRow, chunks, decode_png
from diffedit.bundle import ModelBundle
from diffedit.editor import DiffEditor, EditRequest
from diffedit.params import EditParams


def profile_ours(
    bundle: ModelBundle,
    rows: Sequence[BenchRow],
    params: EditParams,
    *,
    batch: int,
    max_batch: int,
    path: Path,
    top: int = 30,
) -> dict[str, Any]:
    """Ours once more under cProfile (untimed; the profiler's overhead inflates small calls). Saves
    the stats to ``path`` and returns the top functions by own time."""
    editor = DiffEditor(bundle, params, max_batch=max_batch, trajectory_cache=0)  # timed repeats: no cache
    requests = [EditRequest(decode_png(r.png), r.query, r.caption, seed=r.seed, id=r.id) for r in rows]
    profiler = cProfile.Profile()
    profiler.enable()
    for chunk in chunks(requests, batch):
        editor.edit(chunk)
    profiler.disable()
    path.parent.mkdir(parents=True, exist_ok=True)
    profiler.dump_stats(str(path))
    stats = pstats.Stats(profiler)
    entries = []
    for (filename, line, name), (_cc, nc, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        entries.append(
            {"function": f"{Path(filename).name}:{line}({name})", "calls": nc, "tottime": tt, "cumtime": ct}
        )
    entries.sort(key=lambda e: e["tottime"], reverse=True)
    return {"path": str(path), "rows": len(rows), "top_by_tottime": entries[:top]}

"""The settings a job runs with, measured like the benchmark's methods: a model preset's ``params`` on
the benchmark's held-out tasks, judged by the strict judge.

    python -m benchmarks.quality.preset --preset configs/models/shapes-v3.yaml --tasks 200

``make demo`` edits with ``configs/models/shapes-v3.yaml``'s parameters (its own steps, encoding ratio
and guidance), not with the sweep's 25 steps: this is the row that says how good the demo's edits are.
Prints success, clean success, background PSNR and 3-object recolour success; ``--out`` writes the
summary rows and per-task records (``results.csv``, ``tasks.csv``, as the benchmark's).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from benchmarks.quality.methods import run_ours
from benchmarks.quality.metrics import mean_of
from benchmarks.quality.report import format_table, write_csv
from benchmarks.quality.scoring import SUMMARY_COLUMNS, TASK_COLUMNS, score_run, summarise
from diffedit.params import EditParams
from diffedit.shapes.scenes import EditTask, make_edit_tasks


def preset_params(path: str | Path) -> EditParams:
    """The ``params`` section of a job or preset YAML file as ``EditParams`` (strict, as the job reads it)."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    return EditParams.from_dict(data.get("params") or {}, source=f"{path}: params")


def measure_preset(
    bundle: Any, params: EditParams, tasks: Sequence[EditTask], max_batch: int = 64, slice_name: str = "all"
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary row, task records) of ours with ``params`` (its own steps and r) on ``tasks``."""
    from diffedit.editor import DiffEditor

    editor = DiffEditor(bundle, max_batch=max_batch)
    run, _ = run_ours(editor, tasks, params.encode_ratio, params.num_inference_steps, "diffedit", params)
    run.method = "diffedit_preset"
    records = score_run(run, tasks, slice_name)
    row = summarise(run, records)
    row["slice"] = slice_name
    return row, records


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality.preset", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--model", default="models/shapes-v3")
    p.add_argument("--preset", default="configs/models/shapes-v3.yaml")
    p.add_argument("--tasks", type=int, default=200)
    p.add_argument("--seed", type=int, default=0, help="task stream (0: the benchmark's held-out set)")
    p.add_argument("--three-object-tasks", type=int, default=40)
    p.add_argument("--three-object-seed", type=int, default=1000)
    p.add_argument("--out", default="", help="folder for results.csv and tasks.csv (none: print only)")
    args = p.parse_args(argv)
    import torch

    from diffedit.loading import load_bundle

    torch.set_num_threads(1)
    bundle, params = load_bundle(args.model), preset_params(args.preset)
    row, records = measure_preset(bundle, params, make_edit_tasks(args.seed, args.tasks))
    rows = [row]
    if args.three_object_tasks:
        three = make_edit_tasks(
            args.three_object_seed, args.three_object_tasks, kinds=("recolor",), n_objects=3
        )
        row3, records3 = measure_preset(bundle, params, three, slice_name="three_object_recolor")
        rows.append(row3)
        records += records3
    print(f"{args.preset}: {params.num_inference_steps} steps, r {params.encode_ratio}, "
          f"guidance {params.guidance_scale}, mask threshold {params.mask_threshold}")  # fmt: skip
    print(format_table(rows))
    print(f"clean success {mean_of([r['clean_success'] for r in records if r['slice'] == 'all']):.3f}")
    if args.out:
        write_csv(Path(args.out) / "results.csv", rows, SUMMARY_COLUMNS)
        write_csv(Path(args.out) / "tasks.csv", records, TASK_COLUMNS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

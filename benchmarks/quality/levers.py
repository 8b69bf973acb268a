"""Quality levers measured on a *tuning* stream: ours with named parameter settings, strict judge.

    python -m benchmarks.quality.levers --tasks 100 --seed 1 \\
        --setting preset: --setting r0.6:encode_ratio=0.6 --setting g7.5:guidance_scale=7.5

Every setting starts from the preset's ``params`` (``--preset``, the demo's by default) and overrides
what it names (``EditParams`` fields, YAML values). Tasks come from stream ``--seed`` (1 by default:
never the benchmark's held-out stream 0), so choosing among the settings here leaves the held-out
figures honest. Prints one row per setting (success, clean success, background PSNR, UNet evaluations
per edit, seconds) and writes ``levers.csv``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from benchmarks.quality.metrics import mean_of
from benchmarks.quality.preset import measure_preset, preset_params
from benchmarks.quality.report import write_csv
from diffedit.params import EditParams
from diffedit.shapes.scenes import make_edit_tasks

COLUMNS = (
    "setting",
    "overrides",
    "n",
    "success",
    "clean_success",
    "bg_psnr",
    "unet_evals_per_edit",
    "seconds",
)


def parse_setting(text: str, base: EditParams) -> tuple[str, EditParams]:
    """``name:key=value,key=value`` -> (name, ``base`` with the overrides); values are YAML scalars."""
    name, sep, rest = text.partition(":")
    if not sep or not name:
        raise ValueError(f"--setting {text!r}: expected NAME:KEY=VALUE,... (NAME: for the base itself)")
    values: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--setting {text!r}: {item!r} is not KEY=VALUE")
        values[key.strip()] = yaml.safe_load(value)
    return name, EditParams.from_dict({**base.to_dict(), **values}, source=f"--setting {name}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality.levers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--model", default="models/shapes-v3")
    p.add_argument("--preset", default="configs/models/shapes-v3.yaml")
    p.add_argument("--tasks", type=int, default=100)
    p.add_argument("--seed", type=int, default=1, help="task stream (not 0: the held-out set)")
    p.add_argument("--setting", action="append", default=[], help="NAME:KEY=VALUE,... (repeatable)")
    p.add_argument("--out", default="out/levers")
    args = p.parse_args(argv)
    if args.seed == 0:
        raise SystemExit("stream 0 is the benchmark's held-out set: tune on another (--seed 1)")
    import torch

    from diffedit.loading import load_bundle

    torch.set_num_threads(1)
    bundle, base = load_bundle(args.model), preset_params(args.preset)
    tasks = make_edit_tasks(args.seed, args.tasks)
    rows = []
    for text in args.setting or ["preset:"]:
        name, params = parse_setting(text, base)
        t0 = time.perf_counter()
        row, records = measure_preset(bundle, params, tasks)
        rows.append(
            {
                "setting": name,
                "overrides": text.partition(":")[2],
                "n": len(records),
                "success": row["success"],
                "clean_success": row["clean_success"],
                "bg_psnr": row["bg_psnr"],
                "unet_evals_per_edit": mean_of([r["unet_evals"] for r in records]),
                "seconds": time.perf_counter() - t0,
            }
        )
        r = rows[-1]
        print(f"{name:<14} success {r['success']:.3f}  clean {r['clean_success']:.3f}  "
              f"bg {r['bg_psnr']:.2f} dB  UNet/edit {r['unet_evals_per_edit']:.0f}  {r['seconds']:.0f} s", flush=True)  # fmt: skip
    write_csv(Path(args.out) / "levers.csv", rows, COLUMNS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The printed summary and issue 5's targets."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from benchmarks.perf.common import STAGES, TARGETS


def evaluate_targets(report: dict[str, Any]) -> dict[str, Any]:
    """Issue 5's targets against the measured figures (None where a section was not run)."""
    defaults = report.get("settings", {}).get("params_are_defaults", False)
    compare = report.get("compare") or {}
    out: dict[str, Any] = {}

    ratios = compare.get("ratio") or {}
    ratio = ratios.get("edits_per_s_paired_median")
    out["speed_ratio"] = {
        "target": f">= {TARGETS['speed_ratio']}x diffusers' edits/s (median over paired batches)",
        "value": ratio,
        "ratio_of_totals": ratios.get("edits_per_s"),
        "met": None if ratio is None else ratio >= TARGETS["speed_ratio"],
    }
    evals = (compare.get("ours") or {}).get("unet_evals_per_edit")
    out["unet_evals_per_edit"] = {
        "target": f"<= {TARGETS['unet_evals_per_edit']} at defaults",
        "value": evals,
        "met": None if evals is None or not defaults else evals <= TARGETS["unet_evals_per_edit"],
        "at_defaults": defaults,
    }
    fractions = []
    if compare.get("ours") and compare.get("batch", 0) >= TARGETS["model_bound_min_batch"]:
        fractions.append(("compare", compare["batch"], compare["ours"]["model_bound_fraction"]))
    for p in (report.get("batch") or {}).get("points", []):
        if p["batch"] >= TARGETS["model_bound_min_batch"]:
            fractions.append(("batch", p["batch"], p["model_bound_fraction"]))
    worst = min(fractions, key=lambda f: f[2]) if fractions else None
    out["model_bound_fraction"] = {
        "target": f">= {TARGETS['model_bound_fraction']} at batch >= {TARGETS['model_bound_min_batch']}",
        "value": worst[2] if worst else None,
        "worst_at": {"section": worst[0], "batch": worst[1]} if worst else None,
        "all": [{"section": s, "batch": b, "value": v} for s, b, v in fractions],
        "met": None if worst is None else worst[2] >= TARGETS["model_bound_fraction"],
    }
    ray_ = report.get("ray") or {}
    r = ray_.get("ratio")
    out["ray_ratio"] = {
        "target": f">= {TARGETS['ray_ratio']}x in-process rows/s over >= {TARGETS['ray_min_rows']} rows",
        "value": r,
        "rows": ray_.get("rows"),
        "status": ray_.get("status", "not run"),
        "met": None
        if r is None
        else (r >= TARGETS["ray_ratio"] and ray_.get("rows", 0) >= TARGETS["ray_min_rows"]),
    }
    return out


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}f}"
    return str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in header]] + [[_f(c) if not isinstance(c, str) else c for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    """The printed summary: machine, each section's table, the targets."""
    m = report["machine"]
    s = report["settings"]
    out = [
        f"machine: {m['cpu_model']} | {m['cpus_usable']} usable CPUs | torch {m['versions']['torch']} on "
        f"{m['torch_threads']} thread(s) | load average {m['load_average_start'][0]:.2f} at start, "
        f"{m.get('load_average_end', [float('nan')])[0]:.2f} at end",
        f"model: {s['model']} | params: {json.dumps(s['params'])}",
    ]
    c = report.get("compare")
    if c:
        out.append(f"\n== ours vs diffusers' StableDiffusionDiffEditPipeline: {c['rows']} rows x {c['repeats']} passes, batch {c['batch']}, "
                   f"our max_batch {c['max_batch']} ==")  # fmt: skip
        names = [n for n in ("ours", "diffusers") if n in c]
        rows: list[list[Any]] = [
            ["edits/s", *[c[n]["edits_per_s"] for n in names]],
            ["edits/s excl. image I/O", *[c[n]["edits_per_s_excl_io"] for n in names]],
            ["s/edit", *[c[n]["seconds_per_edit"] for n in names]],
        ]
        for stage in STAGES:
            rows.append([f"  s/edit {stage}", *[c[n]["seconds_per_edit_by_stage"][stage] for n in names]])
        rows += [
            ["UNet evals/edit (counted)", *[c[n]["unet_evals_per_edit"] for n in names]],
        ]
        for stage in STAGES[:3]:
            rows.append(
                [
                    f"  evals/edit {stage}",
                    *[(c[n]["unet_evals_per_edit_by_stage"] or {}).get(stage) for n in names],
                ]
            )
        rows += [
            ["UNet calls", *[c[n]["unet_calls"] for n in names]],
            ["UNet samples/call", *[c[n]["unet_samples_per_call"] for n in names]],
            ["UNet ms/sample", *[c[n]["unet_ms_per_sample"] for n in names]],
            ["VAE encodes/edit", *[c[n]["vae_encodes_per_edit"] for n in names]],
            ["VAE decodes/edit", *[c[n]["vae_decodes_per_edit"] for n in names]],
            ["text encoder s", *[c[n]["text_encoder_seconds"] for n in names]],
            ["model-bound fraction", *[c[n]["model_bound_fraction"] for n in names]],
            ["non-model s/edit", *[c[n]["non_model_seconds_per_edit"] for n in names]],
        ]
        for stage in STAGES[:3]:
            rows.append(
                [
                    f"  non-model s {stage}",
                    *[(c[n]["non_model_seconds_by_stage"] or {}).get(stage) for n in names],
                ]
            )
        out.append(_table(["", *names], rows))
        if "ratio" in c:
            r = c["ratio"]
            out.append(
                f"ratio ours/diffusers: edits/s {_f(r['edits_per_s_paired_median'], 2)}x, median of "
                f"{len(r['edits_per_s_paired'])} paired batches (range {_f(min(r['edits_per_s_paired']), 2)}-"
                f"{_f(max(r['edits_per_s_paired']), 2)}); of total times {_f(r['edits_per_s'], 2)}x (excl. image I/O "
                f"{_f(r['edits_per_s_excl_io'], 2)}x); their UNet evals per edit / ours "
                f"{_f(r['unet_evals_per_edit_theirs_over_ours'], 2)}"
            )
    b = report.get("batch")
    if b:
        out.append(
            f"\n== ours by batch size: {b['rows']} rows, {b['num_inference_steps']} steps, max_batch {b['max_batch']} =="
        )
        out.append(
            _table(
                [
                    "batch",
                    "s/edit",
                    "edits/s",
                    "UNet ms/sample",
                    "samples/call",
                    "model-bound",
                    "non-model s/edit",
                ],
                [
                    [
                        p["batch"],
                        p["seconds_per_edit"],
                        p["edits_per_s"],
                        p["unet_ms_per_sample"],
                        p["unet_samples_per_call"],
                        p["model_bound_fraction"],
                        p["non_model_seconds_per_edit"],
                    ]
                    for p in b["points"]
                ],
            )
        )
    z = report.get("size")
    if z:
        out.append(
            f"\n== ours by image size: {z['model']}, {z['rows']} rows, batch {z['batch']}, "
            f"{z['num_inference_steps']} steps =="
        )
        out.append(
            _table(
                ["size", "latent", "s/edit", "UNet ms/sample", "VAE enc+dec s/edit", "model-bound"],
                [
                    [
                        f"{p['size']}x{p['size']}",
                        p["latent"],
                        p["seconds_per_edit"],
                        p["unet_ms_per_sample"],
                        (p["vae_encode_seconds"] + p["vae_decode_seconds"]) / max(p["rows"], 1),
                        p["model_bound_fraction"],
                    ]
                    for p in z["points"]
                ],
            )
        )
    r = report.get("ray")
    if r:
        out.append("\n== Ray job vs in-process editor ==")
        if r.get("status") not in ("measured", "failed"):
            out.append(f"{r.get('status')}: {r.get('reason', '')}")
        else:
            out.append(
                _table(
                    ["", "value"],
                    [
                        ["status", f"{r['status']} ({r['message']})"],
                        ["rows", r["rows"]],
                        ["ray.init s (excluded)", r["ray_init_seconds"]],
                        ["job s (run_job, excl. ray.init)", r["job_seconds"]],
                        ["Ray rows/s", r["rows_per_s"]],
                        ["Ray rows/s (execute phase)", r["rows_per_s_execute"]],
                        ["  job s inside the editor (sum of rows)", r["job_edit_seconds"]],
                        ["  job s outside it (start-up, load, I/O)", r["job_seconds_outside_edit"]],
                        ["  actor ready at s (timeline)", (r.get("timeline") or {}).get("actor_ready")],
                        [
                            "  actor start-up s (timeline)",
                            (r.get("timeline") or {}).get("actor_init_seconds"),
                        ],
                        [
                            "  first block at s / last block end s",
                            " / ".join(
                                _f((r.get("timeline") or {}).get(k))
                                for k in ("first_block_start", "last_block_end")
                            ),
                        ],
                        ["Ray rows/s first to last block", r.get("rows_per_s_steady")],
                        ["model process cold start s (apart)", r["cold_start_seconds"]],
                        ["Ray rows/s excl. that cold start", r["rows_per_s_excl_cold_start"]],
                        ["in-process rows/s (model resident)", r["in_process_rows_per_s"]],
                        [
                            "  before / after the job",
                            " / ".join(_f(b["rows_per_s"]) for b in r["in_process"]),
                        ],
                        ["in-process rows/s incl. PNG I/O", r["in_process_rows_per_s_with_io"]],
                        ["in-process model load s (apart)", r["in_process_model_load_seconds"]],
                        ["Ray / in-process", r["ratio"]],
                        ["Ray / in-process excl. cold start", r["ratio_excl_cold_start"]],
                    ],
                )
            )
    if report.get("precision"):
        from benchmarks.perf.precision import format_precision

        out.append(format_precision(report["precision"]))
    if report.get("archs"):
        from benchmarks.perf.archs import format_archs

        out.append(format_archs(report["archs"]))
    out.append("\n== targets (issue 5) ==")
    rows = []
    for name, t in report["targets"].items():
        met = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        rows.append([name, t["target"], t["value"], met])
    out.append(_table(["target", "wanted", "measured", ""], rows))
    return "\n".join(out)

"""Scores, filter and best-of-K on the shapes world, against the strict judge (issue 17's proof).

    python -m benchmarks.quality.selection --seed 1 --tasks 100 --out out/selection-tuning   # tune
    python -m benchmarks.quality.selection --seed 0 --tasks 200 --out out/selection          # report

Every task (stream ``--seed``: 0 is the benchmark's held-out stream, 1 the tuning stream) is edited by
``DiffEditor`` with the preset's parameters (``--preset``, the demo's), every score of
``diffedit.scores`` and K = ``--candidates`` candidates per row (``diffedit.select``); every candidate
is judged by the strict judge (``diffedit.shapes.judge``). Printed and written (``--out``):

* ``candidates.csv``: one line per task and candidate: verdicts and scores;
* each score's ROC AUC for predicting strict success on the plain edits (candidate 0 = what a K = 1
  job writes), oriented so that higher predicts success (the mask's component count is negated), with
  a 95 % bootstrap interval over tasks;
* the filter (``--filter``, the preset's ``filter`` section by default): precision (kept rows that pass
  the judge) and yield (kept / edited) at K = 1 and on best-of-K;
* best-of-K by the selection objective (``--by``, the preset's ``selection.by``): strict success for
  K = 1, 2, 4 (the first K candidates), the gain over K = 1 with a paired 95 % bootstrap interval, and
  the oracle (any candidate passes) for scale;
* cost: UNet evaluations per row and seconds per row, side by side on the first ``--timing-tasks``
  tasks: plain edit, K = 1 with scores, K = 2 and K = 4 (ratios to the plain edit).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.quality.preset import preset_params
from benchmarks.quality.report import write_csv
from diffedit.scores import SCORE_NAMES, Scoring
from diffedit.select import Selection, choose
from diffedit.shapes.judge import judge
from diffedit.shapes.scenes import make_edit_tasks

#: Scores where lower predicts success (negated for the AUC).
LOWER_IS_BETTER = frozenset({"mask_components"})
BOOTSTRAP = 2000


def auc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """ROC AUC (Mann-Whitney U / (P N), ties count one half); nan without both classes."""
    s, y = np.asarray(scores, float), np.asarray(positive, bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def bootstrap(stat: Any, n: int, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of ``stat(indices)`` over ``BOOTSTRAP`` resamples of n tasks, over the
    resamples where it is finite; (nan, nan) when it is in none."""
    rng = np.random.default_rng(seed)
    values = [stat(rng.integers(0, n, n)) for _ in range(BOOTSTRAP)]
    values = [v for v in values if np.isfinite(v)]
    if not values:  # no resample defines it (an AUC where every plain edit passed, or none did)
        return float("nan"), float("nan")
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def passes(scores: Mapping[str, float | None], rule: Mapping[str, Mapping[str, float]]) -> bool:
    """``rule`` = {"min": {name: v}, "max": {name: v}}: every named score present and within bounds."""
    for bound, sign in (("min", 1), ("max", -1)):
        for name, limit in (rule.get(bound) or {}).items():
            value = scores.get(name)
            if value is None or sign * (value - limit) < 0:
                return False
    return True


def edit_all(editor: Any, tasks: Sequence[Any]) -> tuple[list[list[Any]], float]:
    from diffedit.editor import EditRequest

    requests = [EditRequest(image=t.image, query=t.query, caption=t.caption, seed=int(t.seed), id=t.id)
                for t in tasks]  # fmt: skip
    start = time.perf_counter()
    candidates = editor.edit_candidates(requests)
    return candidates, time.perf_counter() - start


def records_of(tasks: Sequence[Any], candidates: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    out = []
    for task, cands in zip(tasks, candidates, strict=True):
        for c in cands:
            verdict = judge(task, c.image)
            out.append({
                "task": task.id, "kind": task.kind, "n_objects": task.n_objects, "candidate": c.candidate,
                "seed": c.candidate_seed, "success": bool(verdict.success), "clean": bool(verdict.clean),
                "mask_area": c.mask_area, **{f"score_{k}": c.scores.get(k) for k in SCORE_NAMES},
                "unet_evals": c.counters["unet_evals"],
            })  # fmt: skip
    return out


def analyse(
    records: Sequence[dict[str, Any]],
    K: int,
    by: Mapping[str, float],
    rule: Mapping[str, Mapping[str, float]],
) -> dict[str, Any]:
    """The figures of the module docstring from per-candidate records."""
    tasks = list(dict.fromkeys(r["task"] for r in records))
    per = {t: sorted((r for r in records if r["task"] == t), key=lambda r: r["candidate"]) for t in tasks}
    n = len(tasks)
    plain = [per[t][0] for t in tasks]
    success = np.array([r["success"] for r in plain])
    out: dict[str, Any] = {"n": n, "K": K, "success_k1": float(success.mean())}
    # 1. AUC of each score on the plain edits.
    out["auc"] = {}
    for name in [*SCORE_NAMES, "mask_area"]:
        key = name if name == "mask_area" else f"score_{name}"
        vals = np.array([np.nan if r[key] is None else float(r[key]) for r in plain])
        sign = -1.0 if name in LOWER_IS_BETTER else 1.0
        ok = np.isfinite(vals)
        v, y = sign * vals[ok], success[ok]

        def stat(idx: np.ndarray, v: np.ndarray = v, y: np.ndarray = y) -> float:
            return auc(v[idx], y[idx])

        lo, hi = bootstrap(stat, len(v))
        out["auc"][name] = (auc(v, y), lo, hi, int(ok.sum()))
    # 2. Best-of-k by the objective, k = 1, 2, 4 (<= K); the oracle.
    chosen: dict[int, list[dict[str, Any]]] = {}
    for k in sorted({1, 2, 4, K}):
        if k > K:
            continue
        chosen[k] = []
        for t in tasks:
            cands = per[t][:k]
            best = choose([{s: c[f"score_{s}"] for s in SCORE_NAMES} for c in cands], by)
            chosen[k].append(cands[best])
        s_k = np.array([r["success"] for r in chosen[k]], float)

        def gain(idx: np.ndarray, s_k: np.ndarray = s_k) -> float:
            return float(s_k[idx].mean() - success[idx].mean())

        lo, hi = bootstrap(gain, n)
        oracle = float(np.mean([any(c["success"] for c in per[t][:k]) for t in tasks]))
        out.setdefault("best_of", {})[k] = {
            "success": float(s_k.mean()),
            "clean": float(np.mean([r["clean"] for r in chosen[k]])),
            "gain": float(s_k.mean() - success.mean()),
            "gain_ci": (lo, hi),
            "oracle": oracle,
        }
    # 3. The filter at K = 1 and on best-of-K.
    for k, rows in (("1", plain), (str(K), chosen[K])):
        kept = [r for r in rows if passes({s: r[f"score_{s}"] for s in SCORE_NAMES}, rule)]
        out.setdefault("filter", {})[k] = {
            "yield": len(kept) / len(rows),
            "precision": float(np.mean([r["success"] for r in kept])) if kept else float("nan"),
            "kept": len(kept),
            "rows": len(rows),
            "rejected_success": float(np.mean([r["success"] for r in rows if r not in kept]))
            if len(kept) < len(rows)
            else float("nan"),
        }
    return out


def render(result: dict[str, Any], rule: Any, by: Any) -> str:
    lines = [f"{result['n']} tasks, K = {result['K']}; strict success of the plain edit {result['success_k1']:.3f}",
             "", "| score (higher predicts success) | ROC AUC | 95 % CI | n |", "|---|---|---|---|"]  # fmt: skip
    for name, (a, lo, hi, n) in result["auc"].items():
        label = f"-{name}" if name in LOWER_IS_BETTER else name
        lines.append(f"| {label} | {a:.3f} | [{lo:.3f}, {hi:.3f}] | {n} |")
    lines += ["", f"best-of-K by {dict(by)}:", "",
              "| K | success | clean | gain over K = 1 | 95 % CI | oracle (any passes) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for k, b in result["best_of"].items():
        lo, hi = b["gain_ci"]
        lines.append(f"| {k} | {b['success']:.3f} | {b['clean']:.3f} | {b['gain']:+.3f} | [{lo:+.3f}, {hi:+.3f}] | {b['oracle']:.3f} |")  # fmt: skip
    lines += ["", f"filter {rule}:", "", "| rows | kept | yield | precision | success among rejected |",
              "|---|---|---|---|---|"]  # fmt: skip
    for k, f in result["filter"].items():
        lines.append(f"| K = {k} | {f['kept']}/{f['rows']} | {f['yield']:.3f} | {f['precision']:.3f} | {f['rejected_success']:.3f} |")  # fmt: skip
    return "\n".join(lines)


def timing(
    bundle: Any, params: Any, tasks: Sequence[Any], K: int, max_batch: int, variants: Sequence[Any] = ()
) -> list[dict[str, Any]]:
    """Seconds and UNet evaluations per row, side by side: plain, K = 1 scored, K = 2, K = K."""
    from diffedit.editor import DiffEditor

    settings = [("plain", None, 1), ("K=1 scored", Scoring(), 1), ("K=2 scored", Scoring(), 2)]
    if K > 2:
        settings.append((f"K={K} scored", Scoring(), K))
    rows = []
    for name, scoring, k in settings:
        editor = DiffEditor(bundle, params, max_batch=max_batch, scoring=scoring,
                            selection=Selection(candidates=k, variants=tuple(variants)) if k > 1 else None)  # fmt: skip
        candidates, seconds = edit_all(editor, tasks)
        evals = np.mean([sum(c.counters["unet_evals"] for c in cands) for cands in candidates])
        rows.append(
            {"setting": name, "unet_evals_per_row": float(evals), "seconds_per_row": seconds / len(tasks)}
        )
    base = rows[0]["seconds_per_row"]
    for r in rows:
        r["time_ratio"] = r["seconds_per_row"] / base
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality.selection", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--model", default="models/shapes-v3")
    p.add_argument("--preset", default="configs/models/shapes-v3.yaml")
    p.add_argument("--tasks", type=int, default=200)
    p.add_argument("--seed", type=int, default=0, help="task stream (0: held-out; 1: tuning)")
    p.add_argument("--candidates", type=int, default=4)
    p.add_argument(
        "--filter", default="", help='YAML, e.g. "{min: {alignment: 0.5}}" (default: the preset\'s)'
    )
    p.add_argument(
        "--by", default="", help='YAML, e.g. "{alignment: 1.0}" (default: the preset\'s selection.by)'
    )
    p.add_argument(
        "--variants",
        default="",
        help="YAML list of overrides of candidates 1.. (default: the preset's selection.variants)",
    )
    p.add_argument("--timing-tasks", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)

    import torch

    from diffedit.editor import DiffEditor
    from diffedit.loading import load_bundle

    torch.set_num_threads(1)
    preset = yaml.safe_load(Path(args.preset).read_text()) or {}
    rule = yaml.safe_load(args.filter) if args.filter else (preset.get("filter") or {})
    by = (
        yaml.safe_load(args.by)
        if args.by
        else ((preset.get("selection") or {}).get("by") or {"alignment": 1.0})
    )
    variants = tuple(
        yaml.safe_load(args.variants)
        if args.variants
        else ((preset.get("selection") or {}).get("variants") or ())
    )
    bundle, params = load_bundle(args.model), preset_params(args.preset)
    tasks = make_edit_tasks(args.seed, args.tasks)
    editor = DiffEditor(bundle, params, max_batch=args.max_batch, scoring=Scoring(),
                        selection=Selection(candidates=args.candidates, by=by, variants=variants))  # fmt: skip
    candidates, seconds = edit_all(editor, tasks)
    records = records_of(tasks, candidates)
    result = analyse(records, args.candidates, by, rule)
    text = render(result, rule, by)
    print(
        f"stream {args.seed}, {params.num_inference_steps} steps, r {params.encode_ratio}, variants {list(variants)}: {seconds:.0f} s"
    )
    print(text, flush=True)
    cost = (
        timing(bundle, params, tasks[: args.timing_tasks], args.candidates, args.max_batch)
        if args.timing_tasks
        else []
    )
    if cost:
        cost_text = "\n".join(
            ["", f"cost per row ({len(tasks[: args.timing_tasks])} tasks, side by side, this machine):", "",
             "| setting | UNet evaluations | seconds | time / plain |", "|---|---|---|---|"]
            + [f"| {r['setting']} | {r['unet_evals_per_row']:.0f} | {r['seconds_per_row']:.3f} | {r['time_ratio']:.2f} |" for r in cost]
        )  # fmt: skip
        print(cost_text)
        text += "\n" + cost_text
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "candidates.csv", records, list(records[0]))
        (out / "summary.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

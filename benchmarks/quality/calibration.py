"""The judge calibrated against people: a set of edits labelled by eye, and the judge's agreement with it.

    python -m benchmarks.quality.calibration generate --out out/calibration   # edits + unlabelled sheets
    python -m benchmarks.quality.calibration agree --out out/calibration      # judge vs labels

The set (``items``): 168 edits of held-out tasks that no benchmark figure is read from — 144 tasks of
stream ``CAL_STREAM`` (1-3 objects, recolours and reshapes) and 24 forced 3-object recolours of stream
``CAL_THREE_OBJECT_STREAM`` — each edited by one of ``SETTINGS`` in turn (ours at r 0.5 / 0.7 / 0.9,
ours with the paper's mask, ours with the background pasted, SDEdit, diffusers' DiffEdit pipeline,
LEDITS++; 25 steps), so that good, borderline and bad edits all occur. ``generate`` regenerates the
edits exactly (same tasks, seeds, groups) with the bundled model and renders them as numbered sheets
(input | edit | ground truth, with the query) without any verdict, for labelling by eye.

``labels/labels.csv`` holds a person's verdicts (success, clean) for every item, written by the rule in
``labels/RULE.md`` before the judge's thresholds were set. Items with ``item % 3 == 0`` (56) are the
tuning half: the thresholds of ``diffedit.shapes.judge`` were chosen on them; the others (112) are the
test half that ``agree`` reports agreement on, with every disagreement listed.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from diffedit.shapes.judge import THRESHOLDS, Judgement, Thresholds, judge
from diffedit.shapes.scenes import EditTask, make_edit_tasks

#: Task streams of the labelled set (the benchmark reads its figures from streams 0 and 1000).
CAL_STREAM = 7
CAL_THREE_OBJECT_STREAM = 1007
CAL_TASKS, CAL_THREE_OBJECT_TASKS = 144, 24
#: (method, r) of item k is SETTINGS[k % len(SETTINGS)].
SETTINGS: tuple[tuple[str, float], ...] = (
    ("diffedit", 0.5),
    ("diffedit", 0.7),
    ("diffedit", 0.9),
    ("diffedit_paper", 0.7),
    ("diffedit_paste", 0.7),
    ("sdedit", 0.7),
    ("diffusers", 0.7),
    ("ledits", 0.7),
)
STEPS = 25
LABELS = Path(__file__).parent / "labels" / "labels.csv"
LABEL_COLUMNS = ("item", "task_id", "method", "ratio", "steps", "success", "clean", "note")


@dataclass(frozen=True)
class Item:
    """One edit of the labelled set."""

    item: int
    task: EditTask
    method: str
    ratio: float
    steps: int = STEPS

    @property
    def tuning(self) -> bool:
        """Whether the item is in the tuning half (thresholds chosen on it)."""
        return self.item % 3 == 0


def items() -> list[Item]:
    """The labelled set's items, in order (deterministic)."""
    tasks = make_edit_tasks(CAL_STREAM, CAL_TASKS)
    tasks += make_edit_tasks(CAL_THREE_OBJECT_STREAM, CAL_THREE_OBJECT_TASKS, kinds=("recolor",), n_objects=3)
    return [Item(k, t, *SETTINGS[k % len(SETTINGS)]) for k, t in enumerate(tasks)]


def generate(bundle: Any, chosen: Sequence[Item], max_batch: int = 64) -> list[Image.Image]:
    """Every item's edit: the items of one (method, r) run as one group, in item order."""
    from benchmarks.quality.methods import Methods

    runner = Methods(bundle, max_batch=max_batch)
    images: list[Image.Image | None] = [None] * len(chosen)
    for method, ratio in SETTINGS:
        group = [i for i, it in enumerate(chosen) if (it.method, it.ratio) == (method, ratio)]
        if not group:
            continue
        run = runner.run(method, [chosen[i].task for i in group], ratio, STEPS)
        for i, out in zip(group, run.outputs, strict=True):
            images[i] = out.image
    assert all(im is not None for im in images)
    return images  # type: ignore[return-value]


def describe(task: EditTask) -> str:
    """What the edit should do, in words."""
    return (
        f"{task.kind}: {task.source_colour} {task.source_shape} -> {task.target_colour} {task.target_shape}"
    )


def sheet(
    chosen: Sequence[Item],
    images: Sequence[Image.Image],
    cell: int = 160,
    verdicts: Sequence[str] | None = None,
) -> Image.Image:
    """Numbered rows, two items a row: input | edit | ground truth, with the intended edit in words
    (and ``verdicts`` beside it when given; the labelling sheets carry none)."""
    font = ImageFont.load_default(size=13)
    label_h, gap = 34, 24
    per_row = 2
    rows = (len(chosen) + per_row - 1) // per_row
    width = per_row * (3 * cell + gap)
    out = Image.new("RGB", (width, rows * (cell + label_h + 8)), "white")
    draw = ImageDraw.Draw(out)
    for k, (it, image) in enumerate(zip(chosen, images, strict=True)):
        x0 = (k % per_row) * (3 * cell + gap)
        y0 = (k // per_row) * (cell + label_h + 8)
        for j, im in enumerate((it.task.image, image, it.task.target_image)):
            out.paste(
                im.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST),
                (x0 + j * cell, y0 + label_h),
            )
        text = f"#{it.item}  {describe(it.task)}"
        if verdicts is not None:
            text += f"\n{verdicts[k]}"
        draw.multiline_text((x0 + 2, y0 + 2), text, fill="black", font=font)
    return out


def read_labels(path: Path = LABELS) -> dict[int, dict[str, Any]]:
    """item -> its label row (success, clean as bools)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {int(r["item"]): {**r, "success": r["success"] == "1", "clean": r["clean"] == "1"} for r in rows}


def agreement(
    chosen: Sequence[Item], images: Sequence[Image.Image], labels: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    """The judge against the labels, on the tuning and test halves: agreement on success and on clean,
    and every disagreement (item, what the label and the judge said, the judge's measurements)."""
    out: dict[str, Any] = {}
    for half in ("tuning", "test"):
        pairs = [
            (it, judge(it.task, im))
            for it, im in zip(chosen, images, strict=True)
            if it.item in labels and it.tuning == (half == "tuning")
        ]
        n = len(pairs)
        disagreements = []
        for it, j in pairs:
            lab = labels[it.item]
            if j.success != lab["success"] or j.clean != lab["clean"]:
                disagreements.append(
                    {
                        "item": it.item,
                        "task_id": it.task.id,
                        "method": it.method,
                        "ratio": it.ratio,
                        "label": f"success {int(lab['success'])} clean {int(lab['clean'])}",
                        "judge": f"success {int(j.success)} clean {int(j.clean)}",
                        "reason": j.reason,
                        "note": lab.get("note", ""),
                        **{k: round(v, 3) for k, v in j.as_dict().items() if isinstance(v, float)},
                        "blob_px": j.blob_px,
                    }
                )
        out[half] = {
            "n": n,
            "success_agreement": sum(j.success == labels[it.item]["success"] for it, j in pairs) / max(1, n),
            "clean_agreement": sum(j.clean == labels[it.item]["clean"] for it, j in pairs) / max(1, n),
            "label_success_rate": sum(labels[it.item]["success"] for it, _ in pairs) / max(1, n),
            "judge_success_rate": sum(j.success for _, j in pairs) / max(1, n),
            "label_clean_rate": sum(labels[it.item]["clean"] for it, _ in pairs) / max(1, n),
            "judge_clean_rate": sum(j.clean for _, j in pairs) / max(1, n),
            "disagreements": disagreements,
        }
    return out


#: The grid ``tune`` searches (success thresholds first, then clean's given them).
SUCCESS_GRID: dict[str, tuple[float, ...]] = {
    "min_object_iou": (0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85),
    "min_shape_margin": (0.0, 0.02, 0.04, 0.06, 0.08, 0.1),
    "max_misfit": (0.2, 0.1, 0.06),
    "max_halo_px": (120, 80, 60, 55, 50, 45),
    "max_old_colour": (0.3, 0.2, 0.15, 0.1, 0.05),
    "min_sharpness": (0.4, 0.45, 0.5),
}
CLEAN_GRID: dict[str, tuple[float, ...]] = {
    "min_others_iou": (0.7, 0.75, 0.8, 0.85, 0.9, 0.93),
    "min_blob_px": (3, 4, 6, 8, 12, 16),
    "min_background_psnr": (14.0, 16.0, 18.0, 20.0, 22.0, 24.0),
}
#: Thresholds that pass everything: measurements only.
LOOSE = Thresholds(0.0, -1.0, 10.0, 10**9, 10.0, 0.0, 0.0, 10**9, 0.0)
#: Held-out tasks on which the ground truth, its VAE reconstruction and the broken edits are checked.
CONSTRAINT_STREAM, CONSTRAINT_TASKS = 3, 60
#: Least share of VAE reconstructions of the ground truth that must pass (a perfect edit in latent space).
MIN_VAE_PASS = 0.95


def tune(
    measured: Sequence[Judgement],
    labels: Sequence[dict[str, Any]],
    references: Sequence[Judgement],
    broken: Sequence[tuple[Judgement, str]],
) -> tuple[Thresholds, dict[str, float]]:
    """Thresholds that agree best with ``labels`` on ``measured`` (the tuning half), among those under
    which every ``references`` judgement (ground truth; VAE reconstructions of it) passes clean in at
    least ``MIN_VAE_PASS`` of cases and every ``broken`` (judgement, verdict it must lose) loses it.
    Success thresholds are chosen first, then clean's; ties in agreement go to the better balanced
    accuracy (the mean of the rates of agreement on positive and on negative labels), then to the
    stricter setting."""
    import itertools

    def agreement(th: Thresholds, key: str) -> tuple[float, float]:
        """(agreement, balanced accuracy): the second breaks ties (few labels are positive)."""
        said = [(getattr(m.under(th), key), lab[key]) for m, lab in zip(measured, labels, strict=True)]
        pos = [j for j, lab in said if lab]
        neg = [not j for j, lab in said if not lab]
        balanced = (sum(pos) / max(1, len(pos)) + sum(neg) / max(1, len(neg))) / 2
        return sum(j == lab for j, lab in said) / len(said), balanced

    def admissible(th: Thresholds, key: str) -> bool:
        passed = sum(getattr(r.under(th), key) for r in references) / len(references)
        return passed >= MIN_VAE_PASS and not any(
            getattr(b.under(th), verdict) for b, verdict in broken if key == "clean" or verdict == "success"
        )

    best: tuple[tuple[float, float], Thresholds] | None = None
    for values in itertools.product(*SUCCESS_GRID.values()):
        th = replace(THRESHOLDS, **dict(zip(SUCCESS_GRID, values, strict=True)))
        if admissible(th, "success"):
            score = agreement(th, "success")
            if best is None or score >= best[0]:  # later grid points are stricter
                best = (score, th)
    assert best is not None, "no success thresholds pass the ground truth and fail every broken edit"
    success_score, chosen = best
    best = None
    for values in itertools.product(*CLEAN_GRID.values()):
        th = replace(chosen, **dict(zip(CLEAN_GRID, values, strict=True)))
        if admissible(th, "clean"):
            score = agreement(th, "clean")
            if best is None or score >= best[0]:
                best = (score, th)
    assert best is not None, "no clean thresholds pass the ground truth and fail every broken edit"
    return best[1], {
        "success_agreement": success_score[0],
        "success_balanced": success_score[1],
        "clean_agreement": best[0][0],
        "clean_balanced": best[0][1],
    }


def constraints(bundle: Any) -> tuple[list[Judgement], list[tuple[Judgement, str]]]:
    """Measurements of the ground truth and its VAE reconstruction (must pass) and of every broken
    edit of ``degenerate`` (must fail), on ``CONSTRAINT_TASKS`` tasks of ``CONSTRAINT_STREAM``."""
    from benchmarks.quality.degenerate import DEGENERATE
    from benchmarks.quality.methods import run_vae_recon

    tasks = make_edit_tasks(CONSTRAINT_STREAM, CONSTRAINT_TASKS)
    loose = LOOSE  # measurements only
    refs = [judge(t, t.target_image, loose) for t in tasks]
    recon = run_vae_recon(bundle, [replace(t, image=t.target_image) for t in tasks], max_batch=64)
    refs += [judge(t, out.image, loose) for t, out in zip(tasks, recon.outputs, strict=True)]
    broken = [
        (judge(t, make(t), loose), verdict)
        for make, verdict in DEGENERATE.values()
        for t in tasks
        if t.others or make.__name__ != "others_swollen"
    ]
    return refs, broken


def agreement_markdown(result: dict[str, Any]) -> str:
    """``labels/AGREEMENT.md``: the agreement figures of both halves and every disagreement."""
    lines = [
        "# The strict judge against the labels (`python -m benchmarks.quality.calibration agree`)",
        "",
        f"Thresholds: `{THRESHOLDS}`.",
        "",
        "| half | n | success agreement | clean agreement | labels: success / clean | judge: success / clean |",
        "|---|---|---|---|---|---|",
    ]
    for half in ("tuning", "test"):
        r = result[half]
        lines.append(
            f"| {half} | {r['n']} | {r['success_agreement']:.3f} | {r['clean_agreement']:.3f} | "
            f"{r['label_success_rate']:.3f} / {r['label_clean_rate']:.3f} | "
            f"{r['judge_success_rate']:.3f} / {r['judge_clean_rate']:.3f} |"
        )
    for half in ("tuning", "test"):
        lines += ["", f"## Disagreements, {half} half", "", "| item | method | r | label | judge | judge's reason | label's note |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for d in result[half]["disagreements"]:
            lines.append(
                f"| {d['item']} | {d['method']} | {d['ratio']} | {d['label']} | {d['judge']} | {d['reason']} | "
                f"{d['note']} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality.calibration", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("command", choices=["generate", "tune", "agree"])
    p.add_argument("--model", default="models/shapes-v3")
    p.add_argument("--out", default="out/calibration")
    p.add_argument("--labels", default=str(LABELS))
    p.add_argument("--per-sheet", type=int, default=24)
    args = p.parse_args(argv)
    import torch

    from diffedit.loading import load_bundle

    torch.set_num_threads(1)
    out = Path(args.out)
    edits = out / "edits"
    chosen = items()
    if args.command == "generate":
        images = generate(load_bundle(args.model), chosen)
        edits.mkdir(parents=True, exist_ok=True)
        for it, im in zip(chosen, images, strict=True):
            im.save(edits / f"{it.item:03d}.png")
        for s in range(0, len(chosen), args.per_sheet):
            sheet(chosen[s : s + args.per_sheet], images[s : s + args.per_sheet]).save(
                out / f"sheet_{s // args.per_sheet:02d}.png"
            )
        print(
            f"wrote {len(chosen)} edits and {(len(chosen) + args.per_sheet - 1) // args.per_sheet} sheets to {out}"
        )
        return 0
    images = [Image.open(edits / f"{it.item:03d}.png").convert("RGB") for it in chosen]
    if args.command == "tune":
        labels = read_labels(Path(args.labels))
        half = [(it, im) for it, im in zip(chosen, images, strict=True) if it.tuning]
        loose = LOOSE
        measured = [judge(it.task, im, loose) for it, im in half]
        refs, broken = constraints(load_bundle(args.model))
        th, scores = tune(measured, [labels[it.item] for it, _ in half], refs, broken)
        print(f"tuning half: {len(half)} items; {len(refs)} references, {len(broken)} broken edits")
        print(th)
        print({k: round(v, 3) for k, v in scores.items()})
        return 0
    result = agreement(chosen, images, read_labels(Path(args.labels)))
    (out / "agreement.json").write_text(json.dumps(result, indent=2) + "\n")
    (LABELS.parent / "AGREEMENT.md").write_text(agreement_markdown(result))
    for half in ("tuning", "test"):
        r = result[half]
        print(
            f"{half}: n={r['n']}  success agreement {r['success_agreement']:.3f}  clean agreement "
            f"{r['clean_agreement']:.3f}  (labels: success {r['label_success_rate']:.3f} clean "
            f"{r['label_clean_rate']:.3f}; judge: success {r['judge_success_rate']:.3f} clean "
            f"{r['judge_clean_rate']:.3f})"
        )
        for d in r["disagreements"]:
            print(
                f"   #{d['item']:<4} {d['method']:<15} r={d['ratio']}  label {d['label']}  judge {d['judge']}  {d['reason']}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

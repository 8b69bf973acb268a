"""The quality figures README and the model card quote come from four commands that no other test ran
(docs/promises.md: ``benchmarks.quality.preset``, ``.levers``, ``.masks``, ``.selection``). Each runs
here, as its own CLI, on a few tasks of the bundled model at 10 steps, and every figure it writes is
checked against an independent computation: the plain ``DiffEditor`` edit of the same task and seed
judged by ``diffedit.shapes.judge``, or the mask the editor itself builds."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmarks.quality import levers, masks, preset, selection
from benchmarks.quality.metrics import mask_iou
from diffedit.editor import DiffEditor, EditRequest
from diffedit.loading import load_bundle
from diffedit.params import PAPER_MASK, EditParams
from diffedit.shapes.judge import judge
from diffedit.shapes.scenes import make_edit_tasks

MODEL = "models/shapes-v3"
TASKS, STREAM, STEPS = 4, 1, 10


@pytest.fixture
def one_thread(torch_threads):
    torch_threads(1)


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(MODEL)


@pytest.fixture
def fast_preset(tmp_path) -> Path:
    """The demo's preset (configs/models/shapes-v3.yaml) at 10 steps: its other params and filter kept."""
    data = yaml.safe_load(Path("configs/models/shapes-v3.yaml").read_text())
    data["params"]["num_inference_steps"] = STEPS
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def plain_edits(bundle, params: EditParams, tasks) -> list:
    editor = DiffEditor(bundle, params)
    requests = [EditRequest(image=t.image, query=t.query, caption=t.caption, seed=int(t.seed), id=t.id)
                for t in tasks]  # fmt: skip
    return editor.edit(requests)


def test_preset_and_levers_report_the_judges_verdicts_on_the_plain_edits(
    bundle, fast_preset, tmp_path, one_thread
):
    tasks = make_edit_tasks(STREAM, TASKS)
    params = preset.preset_params(fast_preset)
    assert params.num_inference_steps == STEPS
    verdicts = [judge(t, r.image) for t, r in zip(tasks, plain_edits(bundle, params, tasks), strict=True)]
    success = np.mean([v.success for v in verdicts])
    clean = np.mean([v.clean for v in verdicts])

    assert preset.main(["--model", MODEL, "--preset", str(fast_preset), "--tasks", str(TASKS),
                        "--seed", str(STREAM), "--three-object-tasks", "0", "--out", str(tmp_path / "p")]) == 0  # fmt: skip
    (row,) = read_csv(tmp_path / "p" / "results.csv")
    assert (row["method"], int(row["n"]), int(row["steps"])) == ("diffedit_preset", TASKS, STEPS)
    assert float(row["success"]) == pytest.approx(success) and float(row["clean_success"]) == pytest.approx(
        clean
    )
    records = read_csv(tmp_path / "p" / "tasks.csv")
    assert [r["task_id"] for r in records] == [t.id for t in tasks]
    assert [float(r["success"]) == 1.0 for r in records] == [bool(v.success) for v in verdicts]

    assert levers.main(["--model", MODEL, "--preset", str(fast_preset), "--tasks", str(TASKS),
                        "--seed", str(STREAM), "--setting", "preset:", "--setting", "t0.5:mask_threshold=0.5",
                        "--out", str(tmp_path / "l")]) == 0  # fmt: skip
    base, changed = read_csv(tmp_path / "l" / "levers.csv")
    assert (base["setting"], changed["setting"], changed["overrides"]) == (
        "preset",
        "t0.5",
        "mask_threshold=0.5",
    )
    for key in ("success", "clean_success", "bg_psnr"):  # the lever's "preset" row is the preset's row
        assert float(base[key]) == pytest.approx(float(row[key]), abs=1e-4), key
    other = [judge(t, r.image) for t, r in
             zip(tasks, plain_edits(bundle, params.replace(mask_threshold=0.5), tasks), strict=True)]  # fmt: skip
    assert float(changed["success"]) == pytest.approx(np.mean([v.success for v in other]))
    # K = r * 10 inversion steps, K guided decoding steps (2 evaluations each), n mask draws (2 each)
    k = params.num_encode_steps
    assert float(base["unet_evals_per_edit"]) == k + 2 * k + 2 * params.num_mask_draws
    with pytest.raises(SystemExit, match="held-out"):
        levers.main(["--model", MODEL, "--seed", "0", "--tasks", "1"])


def test_selection_reports_candidates_the_judge_and_the_filter_agree_with(
    bundle, fast_preset, tmp_path, one_thread, capsys
):
    tasks = make_edit_tasks(STREAM, TASKS)
    params = preset.preset_params(fast_preset)
    assert selection.main(["--model", MODEL, "--preset", str(fast_preset), "--tasks", str(TASKS),
                           "--seed", str(STREAM), "--candidates", "2", "--timing-tasks", "0",
                           "--out", str(tmp_path / "s")]) == 0  # fmt: skip
    rows = read_csv(tmp_path / "s" / "candidates.csv")
    assert [(r["task"], int(r["candidate"])) for r in rows] == [(t.id, k) for t in tasks for k in (0, 1)]
    # candidate 0 is the plain edit: the same verdict as DiffEditor's edit of the task, judged here
    plain = [judge(t, r.image) for t, r in zip(tasks, plain_edits(bundle, params, tasks), strict=True)]
    assert [r["success"] == "True" for r in rows if r["candidate"] == "0"] == [bool(v.success) for v in plain]
    summary = (tmp_path / "s" / "summary.md").read_text()
    assert f"strict success of the plain edit {np.mean([v.success for v in plain]):.3f}" in summary
    # the preset's filter (a lower bound on alignment) keeps exactly the plain rows whose score passes it
    bound = yaml.safe_load(fast_preset.read_text())["filter"]["min"]["alignment"]
    kept = sum(float(r["score_alignment"]) >= bound for r in rows if r["candidate"] == "0")
    assert f"| K = 1 | {kept}/{TASKS} |" in summary
    assert "| score (higher predicts success) | ROC AUC |" in capsys.readouterr().out


def test_the_mask_study_scores_the_masks_the_editor_builds(bundle, tmp_path, one_thread):
    tasks = make_edit_tasks(STREAM, 3)
    assert masks.main(["--model", MODEL, "--tasks", "3", "--seed", str(STREAM), "--steps", str(STEPS),
                       "--out", str(tmp_path / "m")]) == 0  # fmt: skip
    rows = read_csv(tmp_path / "m" / "masks.csv")

    def same(text: str, value: object) -> bool:
        return text == str(value) if isinstance(value, (str, bool)) else float(text) == float(value)

    paper = next(r for r in rows if r["reference"] == "caption"
                 and all(same(r[k], v) for k, v in PAPER_MASK.items() if k in r))  # fmt: skip
    # the paper's recipe through the editor itself: its latent mask, each cell 4 x 4 pixels, against the
    # task's region
    params = EditParams(num_inference_steps=STEPS).replace(**PAPER_MASK)
    ious = []
    for task, result in zip(tasks, plain_edits(bundle, params, tasks), strict=True):
        mask = np.kron(result.mask_binary_latent, np.ones((4, 4), dtype=bool))  # (64, 64)
        ious.append(mask_iou(mask, task.region))
    assert float(paper["iou"]) == pytest.approx(np.mean(ious), abs=1e-3)
    assert {r["reference"] for r in rows} == {"caption", "empty"}


def test_an_auc_no_resample_defines_has_no_interval():
    """With every plain edit passing (or none), the AUC and its interval are undefined: nan, not a crash
    (``selection.main`` on 4 tasks raised IndexError from ``np.percentile`` of an empty list)."""
    all_pass = [True] * 4
    assert np.isnan(selection.auc([0.1, 0.2, 0.3, 0.4], all_pass))
    lo, hi = selection.bootstrap(lambda idx: selection.auc(np.arange(4.0)[idx], np.array(all_pass)[idx]), 4)
    assert np.isnan(lo) and np.isnan(hi)
    lo, hi = selection.bootstrap(lambda idx: float(np.mean(idx)), 50)  # a defined statistic: an interval
    assert 15 < lo < 24.5 < hi < 34

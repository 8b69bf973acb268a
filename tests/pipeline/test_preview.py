"""``preview``'s strict-judge verdicts on rows of the shapes world (no Ray: rows built by hand)."""

from __future__ import annotations

import io

from PIL import Image

from diffedit.shapes.scenes import make_edit_tasks
from pipeline.preview import contact_sheet, shapes_verdict


def _png(image: Image.Image) -> dict:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return {"bytes": buffer.getvalue()}


def _row(task, edited: Image.Image, **over) -> dict:
    row = {
        "id": task.id,
        "status": "ok",
        "error": None,
        "caption": task.caption,
        "query": task.query,
        "input_image": _png(task.image),
        "mask": _png(Image.new("L", task.image.size)),
        "edited_image": _png(edited),
        "mask_area": 0.1,
    }
    return {**row, **over}


def test_verdicts_of_shapes_rows_and_none_elsewhere():
    task = make_edit_tasks(0, 1)[0]
    right = shapes_verdict(_row(task, task.target_image))
    assert right is not None and right.success and right.clean and right.text == "judge: success, clean"
    unedited = shapes_verdict(_row(task, task.image))
    assert unedited is not None and not unedited.success and unedited.text.startswith("judge: FAILED (")
    # Rows whose ground truth is unknown or does not match get no verdict.
    assert (
        shapes_verdict(_row(task, task.target_image, query="a red circle on a grey striped background"))
        is None
    )
    assert shapes_verdict(_row(task, task.target_image, id="coco-42")) is None
    assert shapes_verdict(_row(task, task.target_image, input_image=_png(task.target_image))) is None
    assert shapes_verdict(_row(task, task.target_image, status="failed")) is None


def test_contact_sheet_carries_a_line_per_row_with_its_verdict():
    tasks = make_edit_tasks(0, 2)
    rows = [_row(t, t.target_image) for t in tasks]
    sheet = contact_sheet(rows, cell=96, verdicts=[shapes_verdict(r) for r in rows])
    plain = contact_sheet(rows, cell=96)
    assert sheet.size == plain.size and sheet.width == 3 * 96 + 16
    assert sheet.tobytes() != plain.tobytes()  # the verdict lines are drawn

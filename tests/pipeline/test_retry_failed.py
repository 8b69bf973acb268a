"""Issue 10, item 3: ``run --retry-failed`` edits exactly the committed failed rows again and replaces
their records (each id still exactly once), with the summary counting what was retried; a crash
between the new record's commit and the old one's removal is repaired by the next run's dedupe."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pyarrow as pa
from pipeline_testing import png_bytes, read_output, state_file, write_manifest
from typer.testing import CliRunner

from pipeline import output as O
from pipeline import rows as R
from pipeline.cli import app

PAD = "a big scene with many things " * 4


def _rows(ids_status_run: list[tuple[str, str, str]]) -> pa.Table:
    return R.table_from_rows(
        [{"id": i, "status": s, "run_id": r, "error": None if s == R.OK else "image x not found"}
         for i, s, r in ids_status_run],
        R.OUTPUT_SCHEMA,
    )  # fmt: skip


def test_dedupe_keeps_the_ok_then_the_newest_copy(tmp_path):
    """The state a crash mid-retry leaves: the retried rows' new records committed, their old failed
    records not yet removed. The repair keeps the ok copy (or the newest failed one), and every other
    row of the old part."""
    fs, out = fsspec.filesystem("file"), str(tmp_path)
    O.commit_table(fs, out, _rows([("a", "failed", "20240101T000000Z-1"), ("b", "ok", "20240101T000000Z-1"),
                                   ("c", "failed", "20240101T000000Z-1")]))  # fmt: skip
    O.commit_table(fs, out, _rows([("a", "ok", "20240102T000000Z-2")]))
    O.commit_table(fs, out, _rows([("c", "failed", "20240102T000000Z-2")]))  # failed again, newer
    assert O.dedupe(fs, out) == 2
    table = O.read_parts(fs, out, columns=["id", "status", "run_id"])
    got = sorted(zip(*(table.column(c).to_pylist() for c in ("id", "status", "run_id")), strict=True))
    assert got == [("a", "ok", "20240102T000000Z-2"), ("b", "ok", "20240101T000000Z-1"),
                   ("c", "failed", "20240102T000000Z-2")]  # fmt: skip
    assert O.dedupe(fs, out) == 0


def test_retry_failed_re_edits_exactly_the_failed_rows(ray_cluster, tiny_model, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        if i != 2:  # row-2's image arrives late
            (images / f"row-{i}.png").write_bytes(png_bytes(i))
    write_manifest(
        tmp_path / "manifest" / "part-0.parquet",
        [{"id": f"row-{i}", "image": str(images / f"row-{i}.png"), "caption": "a red circle", "query": "a blue circle"}
         for i in range(4)]
        + [{"id": "row-4", "image": str(images / "row-0.png"), "caption": "a red circle", "query": "a blue circle",
            "num_inference_steps": 300},
           # a no-op edit (the colour lies beyond the tiny tokenizer's 16 tokens): ok, flagged, counted
           {"id": "row-5", "image": str(images / "row-1.png"), "caption": PAD + "red", "query": PAD + "blue"}],
        pa.schema([("id", pa.string()), ("image", pa.string()), ("caption", pa.string()), ("query", pa.string()),
                   ("num_inference_steps", pa.int64())]),
    )  # fmt: skip
    out = tmp_path / "out"
    job = tmp_path / "job.yaml"
    job.write_text(
        f"""
name: retry
input: {{paths: ["{tmp_path / "manifest"}"]}}
output: {{path: "{out}", rows_per_file: 2}}
model: {{source: "{tiny_model}"}}
params: {{num_inference_steps: 4, num_mask_draws: 1}}
compute: {{batch_size: 2, rows_per_block: 2, torch_threads: 1}}
images: {{allow: ["{images}"]}}
limits: {{max_inference_steps: "${{MAX_STEPS:-200}}"}}
failure: {{max_failed_fraction: 0.5}}
"""
    )
    runner = CliRunner()
    first = runner.invoke(app, ["run", str(job), "--address", ray_cluster])
    assert first.exit_code == 0, first.output
    before = {p.name: p.read_bytes() for p in out.glob("part-*.parquet")}
    table = read_output(out)
    status = dict(zip(table.column("id").to_pylist(), table.column("status").to_pylist(), strict=True))
    assert status == {
        "row-0": "ok",
        "row-1": "ok",
        "row-2": "failed",
        "row-3": "ok",
        "row-4": "failed",
        "row-5": "ok",
    }
    summary = json.loads(state_file(out, "summary.json").read_text())
    assert summary["output"]["unchanged"] == 1 and summary["output"]["truncated"] == 1
    assert [(g["class"], g["count"]) for g in summary["errors"]] == [
        ("image <path> not found", 1),
        ("over a job limit: num_inference_steps <n> is above limits.max_inference_steps = <n>", 1),
    ]
    assert "1 unchanged (no-op edit), 1 truncated" in first.output

    # nothing changed: a plain rerun is a no-op (failed rows are answers, not work left)
    assert "already complete" in runner.invoke(app, ["run", str(job), "--address", ray_cluster]).output

    # the causes are fixed: the image is uploaded, the limit raised
    (images / "row-2.png").write_bytes(png_bytes(2))
    retried = runner.invoke(
        app, ["run", str(job), "--address", ray_cluster, "--retry-failed"], env={"MAX_STEPS": "400"}
    )
    assert retried.exit_code == 0, retried.output
    assert "retried (failed before)  2 (2 ok now)" in retried.output
    summary = json.loads(state_file(out, "summary.json").read_text())
    assert summary["this_run"]["rows_retried"] == 2 and summary["this_run"]["rows_retried_ok"] == 2
    assert summary["this_run"]["rows_edited"] == 2 and summary["this_run"]["rows_already_done"] == 4
    assert summary["output"]["duplicates_removed"] == 0
    assert summary["output"]["failed"] == 0 and summary["errors"] == []

    final = read_output(out)
    assert sorted(final.column("id").to_pylist()) == [f"row-{i}" for i in range(6)]  # each id exactly once
    assert set(final.column("status").to_pylist()) == {"ok"}
    after = {p.name: p.read_bytes() for p in out.glob("part-*.parquet")}
    untouched = [name for name, data in before.items() if after.get(name) == data]
    rows_untouched = sum(len(read_output_part(out / n)) for n in untouched)
    assert rows_untouched >= 1  # parts holding only ok rows were not rewritten
    assert not list(state_file(out, "staging").glob("*"))


def read_output_part(path: Path) -> list:
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["id"]).column("id").to_pylist()

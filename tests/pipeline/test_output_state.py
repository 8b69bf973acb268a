"""What the next run does with the output a run left (README, "Exactly once, resume, idempotency" and
"Output"): new manifest ids are edited and nothing else is; an output holding ids the input lacks is
refused (exit 3) and left untouched; the markers and staging folder of earlier versions are tidied."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import fsspec
import pytest
from pipeline_testing import (
    FAST_PARAMS,
    error_lines,
    png_bytes,
    read_output,
    snapshot,
    state_file,
    write_manifest,
)
from typer.testing import CliRunner

from pipeline import output as O
from pipeline import rows as R
from pipeline.cli import app

IDS = ["a", "b"]


def _rows(ids: list[str], offset: int = 0) -> list[dict]:
    return [
        {"id": i, "image_bytes": png_bytes(offset + n), "caption": "a red circle", "query": "a blue circle"}
        for n, i in enumerate(ids)
    ]


@pytest.fixture(scope="module")
def finished(ray_cluster, tiny_model, tmp_path_factory) -> Path:
    """A folder with a job (relative input and output paths), its 2-row manifest and its finished
    output, one part per row."""
    root = tmp_path_factory.mktemp("finished")
    write_manifest(root / "in" / "first.parquet", _rows(IDS))
    params = ", ".join(f"{k}: {v}" for k, v in FAST_PARAMS.items())
    (root / "job.yaml").write_text(
        f"input: {{paths: [in]}}\noutput: {{path: out, rows_per_file: 1}}\nmodel: {{source: '{tiny_model}'}}\n"
        f"params: {{{params}}}\ncompute: {{batch_size: 1, rows_per_block: 1, torch_threads: 1}}\n"
    )
    previous = os.getcwd()
    os.chdir(root)  # relative paths resolve against the working directory
    try:
        result = CliRunner().invoke(app, ["run", "job.yaml", "--address", ray_cluster])
    finally:
        os.chdir(previous)
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def checkout(finished, tmp_path, monkeypatch) -> Path:
    """A private copy of ``finished``, as the working directory."""
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    monkeypatch.chdir(copy)
    return copy


def _parts(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("part-*.parquet"))}


@pytest.mark.slow
def test_new_manifest_ids_are_edited_by_the_next_run_and_nothing_else(checkout, ray_cluster):
    """Two real runs (two actor starts: slow on a loaded 2-core machine)."""
    out = checkout / "out"
    before = _parts(out)
    first_run = json.loads(state_file(out, O.JOB_FILE).read_text())["run_id"]
    write_manifest(checkout / "in" / "second.parquet", _rows(["c", "d"], offset=10))
    checked = CliRunner().invoke(app, ["validate", "job.yaml"])
    assert checked.exit_code == 0, checked.output
    assert "2 of 4 rows committed (a run resumes)" in checked.output

    ran = CliRunner().invoke(app, ["run", "job.yaml", "--address", ray_cluster])
    assert ran.exit_code == 0, ran.output
    summary = json.loads(state_file(out, O.SUMMARY_FILE).read_text())
    assert summary["this_run"]["rows_edited"] == 2 and summary["this_run"]["rows_already_done"] == 2
    assert all(_parts(out)[name] == data for name, data in before.items())  # not rewritten
    rows = {r["id"]: r for r in read_output(out).to_pylist()}
    assert sorted(rows) == ["a", "b", "c", "d"]
    assert {i: rows[i]["run_id"] for i in IDS} == dict.fromkeys(IDS, first_run)  # not re-edited
    assert {rows[i]["run_id"] for i in ("c", "d")} == {summary["run_id"]} != {first_run}
    assert state_file(out, O.SUCCESS_FILE).read_text().strip() == summary["run_id"]


def test_an_output_of_the_inner_state_layout_is_adopted_with_its_progress(tiny_model, tmp_path, monkeypatch):
    """An output of the version that kept the run's state inside the folder (``<out>/.diffedit/``, which
    polars could not read past: issue 20 item 9) keeps its identity and progress: ``validate`` reads that
    state and writes nothing, and the next run moves it to the hidden folder beside the output, leaving
    only the parts in it."""
    root = committed_by_hand(tmp_path, IDS, tiny_model)
    out = root / "out"
    monkeypatch.chdir(root)
    first = CliRunner().invoke(app, ["run", "job.yaml"])  # every id committed: completes without Ray
    assert first.exit_code == 0, first.output
    state = Path(O.state_dir(str(out)))
    assert state == root / ".out.diffedit"
    first_run = json.loads((state / O.JOB_FILE).read_text())["run_id"]
    legacy = out / ".diffedit"
    shutil.move(state, legacy)  # what that version left
    (legacy / O.UNREADABLE).mkdir()
    (legacy / O.UNREADABLE / "part-0.parquet").write_bytes(b"a part set aside by --repair")
    before = snapshot(root)

    checked = CliRunner().invoke(app, ["validate", "job.yaml"])
    assert checked.exit_code == 0, checked.output
    assert f"complete ({len(IDS)} rows, _SUCCESS present" in checked.output
    assert snapshot(root) == before  # validate writes nothing

    again = CliRunner().invoke(app, ["run", "job.yaml"])
    assert again.exit_code == 0, again.output
    assert f"already complete: all {len(IDS)} rows" in again.output
    assert sorted(p.name for p in out.iterdir()) == sorted(_parts(out))  # the parts, nothing else
    assert json.loads((state / O.JOB_FILE).read_text())["run_id"] == first_run  # identity kept
    assert (state / O.SUCCESS_FILE).read_text().strip() == first_run
    assert (state / O.UNREADABLE / "part-0.parquet").read_bytes() == b"a part set aside by --repair"


def committed_by_hand(root: Path, ids: list[str], model: Path) -> Path:
    """A folder with a job, a manifest of ``ids`` and an output whose parts already hold ``ids`` (as
    written by ``commit_table``, without any run state): every check before Ray, and no Ray needed."""
    write_manifest(root / "in" / "first.parquet", _rows(ids))
    (root / "job.yaml").write_text(
        f"input: {{paths: [in]}}\noutput: {{path: out, rows_per_file: 1}}\nmodel: {{source: '{model}'}}\n"
    )
    fs = fsspec.filesystem("file")
    for i in ids:
        O.commit_table(fs, str(root / "out"), R.table_from_rows([{"id": i, "status": R.OK, "run_id": "old"}],
                                                                 R.OUTPUT_SCHEMA))  # fmt: skip
    return root


def test_an_output_holding_ids_the_input_lacks_is_refused_with_exit_3(tiny_model, tmp_path, monkeypatch):
    root = committed_by_hand(tmp_path, IDS, tiny_model)
    write_manifest(root / "in" / "first.parquet", _rows(["a"]))  # "b" is gone from the input
    out = root / "out"
    before = snapshot(out)
    monkeypatch.chdir(root)
    for command in ("validate", "run"):
        result = CliRunner().invoke(app, [command, "job.yaml"])
        assert result.exit_code == 3, result.output
        errors = error_lines(result.output)
        assert len(errors) == 1 and errors[0].startswith("error: input: output out holds 1 id(s)"), errors
        assert "that the input does not (e.g. ['b'])" in errors[0]
    assert snapshot(out) == before  # refused before writing anything


def test_the_leftovers_of_earlier_versions_are_tidied_by_the_next_run(tiny_model, tmp_path, monkeypatch):
    """An output written before the markers left the parts' folder: _SUCCESS, _job.json, _summary.json
    and _staging/ beside the parts. The next run (every id committed: no Ray needed) removes them and
    keeps the parts."""
    root = committed_by_hand(tmp_path, IDS, tiny_model)
    out = root / "out"
    for name in ("_SUCCESS", "_job.json", "_summary.json"):
        (out / name).write_text("{}\n")
    (out / "_staging").mkdir()
    (out / "_staging" / "part-0.parquet.1234.tmp").write_bytes(b"half a part")
    before = _parts(out)
    assert len(before) == len(IDS)

    monkeypatch.chdir(root)
    result = CliRunner().invoke(app, ["run", "job.yaml"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # the parts, nothing else
    assert _parts(out) == before
    assert state_file(out, O.SUCCESS_FILE).exists()
    summary = json.loads(state_file(out, O.SUMMARY_FILE).read_text())
    assert summary["this_run"]["rows_edited"] == 0 and summary["output"]["ok"] == len(IDS)

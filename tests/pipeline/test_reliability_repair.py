"""Issue 20, item 3: a committed part that cannot be read (truncated, garbage, a broken footer) stops
``validate`` and ``run`` with exit 3 naming the file (not exit 1 "a rerun resumes" for ever), ``run``
removes ``_SUCCESS`` (the output is no longer complete), and ``run --repair`` sets the part aside in
``unreadable/`` in the state folder beside the output and edits its rows again."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pipeline_testing import FAST_PARAMS, png_bytes, read_output, state_file, write_manifest
from typer.testing import CliRunner

from pipeline import output as O
from pipeline import rows as R
from pipeline.cli import app
from pipeline.config import StorageConfig
from pipeline.storage import filesystem

IDS = [f"r{i}" for i in range(6)]


def corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(os.urandom(len(data)))
    else:  # the footer's metadata overwritten, its length and magic bytes intact: Arrow raises OSError
        path.write_bytes(data[:-40] + os.urandom(32) + data[-8:])


@pytest.fixture
def finished(tmp_path: Path, tiny_model: Path) -> dict:
    """A finished output (three parts of two rows, _SUCCESS) of a job whose manifest has six rows."""
    write_manifest(tmp_path / "in" / "m.parquet",
                   [{"id": i, "image_bytes": png_bytes(n), "query": "a blue circle"} for n, i in enumerate(IDS)])  # fmt: skip
    out = tmp_path / "out"
    fs, _ = filesystem(str(out), StorageConfig())
    parts = [
        O.commit_table(fs, str(out), R.table_from_rows([{"id": i, "status": R.OK, "run_id": "r"} for i in pair], R.OUTPUT_SCHEMA))
        for pair in (IDS[0:2], IDS[2:4], IDS[4:6])
    ]  # fmt: skip
    state_file(out, "_SUCCESS").parent.mkdir(exist_ok=True)
    state_file(out, "_SUCCESS").write_text("r\n")
    params = ", ".join(f"{k}: {v}" for k, v in FAST_PARAMS.items())
    job = tmp_path / "job.yaml"
    job.write_text(
        f"input: {{paths: ['{tmp_path / 'in'}']}}\noutput: {{path: '{out}', rows_per_file: 2}}\n"
        f"model: {{source: '{tiny_model}'}}\nparams: {{{params}}}\ncompute: {{batch_size: 2, torch_threads: 1}}\n"
    )
    return {"job": job, "out": out, "parts": [Path(p) for p in parts]}


@pytest.mark.parametrize("how", ["truncated", "garbage", "footer"])
def test_an_unreadable_part_is_named_and_set_aside(finished, how):
    out, bad = finished["out"], finished["parts"][1]
    corrupt(bad, how)
    fs, path = filesystem(str(out), StorageConfig())
    with pytest.raises(O.UnreadableParts) as info:
        O.read_parts(fs, path, columns=["id"])
    assert info.value.paths == (str(bad),)
    assert bad.name in str(info.value) and "--repair" in str(info.value)
    assert O.set_aside_unreadable(fs, path) == [bad.name]
    assert (state_file(out, O.UNREADABLE) / bad.name).read_bytes()  # kept for inspection, hidden from readers
    assert sorted(O.read_parts(fs, path, columns=["id"]).column("id").to_pylist()) == IDS[:2] + IDS[4:]


def test_validate_and_run_exit_3_naming_the_file_and_run_removes_success(finished):
    bad = finished["parts"][2]
    corrupt(bad, "truncated")
    checked = CliRunner().invoke(app, ["validate", str(finished["job"])])
    assert checked.exit_code == 3, checked.output
    assert bad.name in checked.output and "--repair" in checked.output
    assert state_file(finished["out"], "_SUCCESS").exists()  # validate writes nothing
    ran = CliRunner().invoke(app, ["run", str(finished["job"])])
    assert ran.exit_code == 3, ran.output
    assert bad.name in ran.output and "a rerun resumes" not in ran.output
    assert not state_file(finished["out"], "_SUCCESS").exists()  # no longer complete


def test_run_repair_edits_the_rows_of_the_unreadable_part_again(finished, ray_cluster):
    bad = finished["parts"][1]
    corrupt(bad, "garbage")
    result = CliRunner().invoke(app, ["run", str(finished["job"]), "--repair", "--address", ray_cluster])
    assert result.exit_code == 0, result.output
    out = finished["out"]
    assert (state_file(out, O.UNREADABLE) / bad.name).exists()  # the corrupt copy, set aside
    assert sorted(pq.read_table(bad).column("id").to_pylist()) == IDS[2:4]  # a new part, same ids: same name
    summary = json.loads(state_file(out, "summary.json").read_text())
    assert summary["this_run"]["rows_edited"] == 2 and summary["this_run"]["rows_already_done"] == 4
    table = read_output(out)
    assert sorted(table.column("id").to_pylist()) == IDS  # every id exactly once
    mine = [i for i, r in zip(table.column("id").to_pylist(), table.column("run_id").to_pylist(), strict=True)
            if r == summary["run_id"]]  # fmt: skip
    assert sorted(mine) == IDS[2:4]  # the rows of the unreadable part, edited again
    assert all(pq.read_metadata(p).num_rows == 2 for p in out.glob("part-*.parquet"))
    assert state_file(out, "_SUCCESS").exists()

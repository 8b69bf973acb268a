"""Issue 20, item 9: the output folder, read by each common reader as the folder itself, yields exactly
the committed rows, with a run in flight (a staged part, job.json) and after success (summary.json,
_SUCCESS).

polars was the reader that failed: ``pl.read_parquet(folder)`` lists every file below the folder, hidden
ones included, and refuses a folder whose files have different extensions, so the run's state, kept in
``<out>/.diffedit/`` until then, made it fail. The state now lives beside the folder
(``<parent>/.<name>.diffedit/``) and the folder holds the parts only. Nightly outputs read together
(the parent of ``ds=...`` folders) are read by the readers that skip hidden names."""

from __future__ import annotations

import fsspec
import pytest

from pipeline import output as O
from pipeline import rows as R
from pipeline.storage import parquet_bytes

IDS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An output as a finished run leaves it, plus a staged part of a run in flight."""
    fs = fsspec.filesystem("file")
    folder = str(tmp_path_factory.mktemp("readers") / "out")

    def table(ids: list[str]):
        return R.table_from_rows([{"id": i, "status": R.OK, "run_id": "r"} for i in ids], R.OUTPUT_SCHEMA)

    O.write_json_atomic(fs, O.state(folder, O.JOB_FILE), {"run_id": "r"})
    O.commit_table(fs, folder, table(IDS[:2]), run_id="r")
    O.commit_table(fs, folder, table(IDS[2:]), run_id="r")
    staged = f"{O.state(folder, O.STAGING)}/{O.part_name(['x'])}.0123abcd.tmp"
    fs.pipe(staged, parquet_bytes(table(["x"]).cast(R.output_schema_with_metadata())))
    O.write_json_atomic(fs, O.state(folder, O.SUMMARY_FILE), {"status": "succeeded"})
    O.write_bytes_atomic(fs, O.state(folder, O.SUCCESS_FILE), b"r\n")
    return folder


def test_pyarrow_reads_the_folder(out):
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    assert sorted(pq.read_table(out).column("id").to_pylist()) == IDS
    assert sorted(pads.dataset(out, format="parquet").to_table().column("id").to_pylist()) == IDS


def test_pandas_reads_the_folder(out):
    import pandas

    assert sorted(pandas.read_parquet(out)["id"]) == IDS


def test_duckdb_reads_the_folder(out):
    import duckdb

    for source in (out, f"{out}/*.parquet", f"{out}/**/*.parquet"):
        rows = duckdb.sql(f"select id from read_parquet('{source}') order by id").fetchall()
        assert [r[0] for r in rows] == IDS, source


def test_datasets_reads_the_folder(out, tmp_path):
    import datasets

    for kwargs in ({"path": out}, {"path": "parquet", "data_dir": out}):
        loaded = datasets.load_dataset(**kwargs, split="train", cache_dir=str(tmp_path / "hf"))
        assert sorted(loaded["id"]) == IDS


def test_polars_reads_the_parts_with_the_documented_glob(out):
    import polars as pl

    assert sorted(pl.read_parquet(f"{out}/*.parquet")["id"].to_list()) == IDS
    assert sorted(pl.scan_parquet(f"{out}/*.parquet").collect()["id"].to_list()) == IDS


def test_polars_reads_the_folder_as_given(out):
    import polars as pl

    assert sorted(pl.read_parquet(out)["id"].to_list()) == IDS
    assert sorted(pl.scan_parquet(out).collect()["id"].to_list()) == IDS


def test_the_folder_holds_the_parts_only_and_the_state_is_beside_it(out):
    import os

    assert all(n.startswith(O.PART_PREFIX) and n.endswith(O.PART_SUFFIX) for n in os.listdir(out))
    parent, name = os.path.split(out)
    assert sorted(os.listdir(parent)) == sorted([name, f".{name}.diffedit"])
    assert sorted(os.listdir(O.state_dir(out))) == sorted(
        [O.JOB_FILE, O.STAGING, O.SUMMARY_FILE, O.SUCCESS_FILE]
    )


def test_nightly_outputs_are_read_together_from_their_parent(tmp_path):
    """``edits/ds=<day>/`` written by two nightly runs, read as one dataset from ``edits/``: the hidden
    state folders beside the partitions are skipped."""
    import duckdb
    import pandas
    import pyarrow.dataset as pads

    fs = fsspec.filesystem("file")
    edits = tmp_path / "edits"
    for day, ids in (("2026-12-02", ["a", "b"]), ("2026-12-03", ["c"])):
        folder = str(edits / f"ds={day}")
        O.write_json_atomic(fs, O.state(folder, O.JOB_FILE), {"run_id": day})
        rows = [{"id": i, "status": R.OK, "run_id": day} for i in ids]
        O.commit_table(fs, folder, R.table_from_rows(rows, R.OUTPUT_SCHEMA), run_id=day)
        O.write_bytes_atomic(fs, O.state(folder, O.SUCCESS_FILE), b"r\n")
    table = pads.dataset(str(edits), format="parquet", partitioning="hive").to_table()
    assert sorted(zip(table.column("id").to_pylist(), map(str, table.column("ds").to_pylist()), strict=True)) == [
        ("a", "2026-12-02"), ("b", "2026-12-02"), ("c", "2026-12-03")
    ]  # fmt: skip
    assert sorted(pandas.read_parquet(edits)["id"]) == ["a", "b", "c"]
    rows = duckdb.sql(f"select id from read_parquet('{edits}/*/*.parquet') order by id").fetchall()
    assert [r[0] for r in rows] == ["a", "b", "c"]

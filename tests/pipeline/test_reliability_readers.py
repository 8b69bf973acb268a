"""Issue 20, item 9: the output folder, read by each common reader as the folder itself (during a run:
a staged part, job.json; after success: summary.json, _SUCCESS), yields exactly the committed rows.

polars is the exception: ``pl.read_parquet(folder)`` lists every file below the folder, hidden ones
included, and refuses a folder whose files have different extensions (``.diffedit/summary.json``), so
it reads the parts with the glob README gives (``folder/*.parquet``); the test of the folder as given
is an expected failure that says so, until the markers move out of the folder."""

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

    O.write_json_atomic(fs, f"{folder}/{O.JOB_FILE}", {"run_id": "r"})
    O.commit_table(fs, folder, table(IDS[:2]), run_id="r")
    O.commit_table(fs, folder, table(IDS[2:]), run_id="r")
    staged = f"{folder}/{O.STAGING}/{O.part_name(['x'])}.0123abcd.tmp"
    fs.pipe(staged, parquet_bytes(table(["x"]).cast(R.output_schema_with_metadata())))
    O.write_json_atomic(fs, f"{folder}/{O.SUMMARY_FILE}", {"status": "succeeded"})
    O.write_bytes_atomic(fs, f"{folder}/{O.SUCCESS_FILE}", b"r\n")
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


@pytest.mark.xfail(
    strict=True,
    reason="polars lists hidden files too and refuses mixed extensions: .diffedit/ must leave the folder",
)
def test_polars_reads_the_folder_as_given(out):
    import polars as pl

    assert sorted(pl.read_parquet(out)["id"].to_list()) == IDS

"""The output folder as readers see it: only the committed parts, during a run, after a kill and
after success. (The rest of this module moved to files by subject: test_pyarrow_file_objects,
test_results_identity, test_preflight, test_exit_codes, test_cli_surface, test_output, test_logs.)"""

from __future__ import annotations

import os

import pytest

from pipeline import output as O
from pipeline import rows as R
from pipeline.storage import parquet_bytes

# --------------------------------------------------------------------------- 9. readers


def test_readers_see_only_the_committed_parts(tmp_path):
    """During a run, after a kill or after success: datasets (data_files='<out>/*', data_dir, the folder
    itself), pyarrow.dataset, pandas and DuckDB (when installed) read exactly the committed rows."""
    import fsspec

    fs = fsspec.filesystem("file")
    out = str(tmp_path / "out")

    def table(ids):
        return R.table_from_rows([{"id": i, "status": R.OK, "run_id": "r"} for i in ids], R.OUTPUT_SCHEMA)

    O.write_json_atomic(fs, O.state(out, O.JOB_FILE), {"run_id": "r"})
    O.commit_table(fs, out, table(["a", "b"]), run_id="r")
    O.commit_table(fs, out, table(["c"]), run_id="r")
    # a write in flight (or left by a kill): a complete Parquet file under its staging name
    staged = f"{O.state(out, O.STAGING)}/{O.part_name(['x', 'y'])}.0123abcd.tmp"
    fs.pipe(staged, parquet_bytes(table(["x", "y"]).cast(R.output_schema_with_metadata())))
    assert fs.exists(staged)

    def check(state: str) -> None:
        import pandas
        import pyarrow.dataset as pads

        datasets = pytest.importorskip("datasets")
        seen = {
            "pyarrow.dataset": pads.dataset(out, format="parquet").to_table().column("id").to_pylist(),
            "pandas": list(pandas.read_parquet(out)["id"]),
        }
        cache = str(tmp_path / f"hf-{state}")
        for name, kwargs in {
            "datasets data_files=*": {"path": "parquet", "data_files": f"{out}/*"},
            "datasets data_dir": {"path": "parquet", "data_dir": out},
            "datasets folder": {"path": out},
        }.items():
            seen[name] = datasets.load_dataset(**kwargs, split="train", cache_dir=cache)["id"]
        try:
            import duckdb

            seen["duckdb"] = [
                r[0] for r in duckdb.sql(f"select id from read_parquet('{out}/**/*.parquet')").fetchall()
            ]
        except ImportError:
            pass
        for reader, ids in seen.items():
            assert sorted(ids) == ["a", "b", "c"], (state, reader, ids)

    check("running")
    O.write_json_atomic(fs, O.state(out, O.SUMMARY_FILE), {"status": "succeeded"})
    O.write_bytes_atomic(fs, O.state(out, O.SUCCESS_FILE), b"r\n")
    check("succeeded")
    assert sorted(os.listdir(out)) == sorted([O.part_name(["a", "b"]), O.part_name(["c"])])  # parts only

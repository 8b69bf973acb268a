"""The output folder: atomic, content-named parts; ownership; dedupe; Hugging Face metadata."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pipeline_testing import FAST_PARAMS, png_bytes, write_manifest
from typer.testing import CliRunner

from pipeline import output as O
from pipeline import rows as R
from pipeline.cli import app


def table(ids: list[str], status: str = R.OK) -> pa.Table:
    return R.table_from_rows([{"id": i, "status": status, "run_id": "r"} for i in ids], R.OUTPUT_SCHEMA)


@pytest.fixture
def fs():
    return fsspec.filesystem("file")


def test_parts_are_named_by_their_ids_and_rewrites_are_idempotent(fs, tmp_path):
    out = str(tmp_path / "out")
    first = O.commit_table(fs, out, table(["b", "a"]))
    again = O.commit_table(fs, out, table(["a", "b"]))
    assert first == again and O.part_files(fs, out) == [first]
    assert first.endswith(O.part_name(["a", "b"]))
    assert fs.ls(O.state(out, O.STAGING), detail=False) == []  # nothing left behind
    assert pq.read_table(first).column("id").to_pylist() == ["a", "b"]  # the retry replaced it


def test_a_writer_that_lost_ownership_commits_nothing(fs, tmp_path):
    out = str(tmp_path / "out")
    O.write_json_atomic(fs, O.state(out, O.JOB_FILE), {"run_id": "new"})
    with pytest.raises(O.OwnershipLost, match="owned by run new"):
        O.commit_table(fs, out, table(["a"]), run_id="old")
    assert O.part_files(fs, out) == []
    O.commit_table(fs, out, table(["a"]), run_id="new")
    assert len(O.part_files(fs, out)) == 1


def test_commit_blocks_splits_by_rows_per_file(fs, tmp_path):
    out = str(tmp_path / "out")
    written = O.commit_blocks(
        fs, out, [table(["a", "b", "c"]), table(["d"], R.FAILED)], rows_per_file=2, run_id=None
    )
    assert (written.rows, written.ok, written.failed, len(written.files)) == (4, 3, 1, 2)  # blocks merged
    assert sorted(O.read_parts(fs, out, ["id"]).column("id").to_pylist()) == ["a", "b", "c", "d"]


def test_dedupe_keeps_one_copy_of_each_id(fs, tmp_path):
    out = str(tmp_path / "out")
    O.commit_table(fs, out, table(["a", "b"]))
    O.commit_table(fs, out, table(["b", "c"]))
    O.commit_table(fs, out, table(["c"]))
    assert O.dedupe(fs, out) == 2
    ids = O.read_parts(fs, out, ["id"]).column("id").to_pylist()
    assert sorted(ids) == ["a", "b", "c"]
    assert O.dedupe(fs, out) == 0


def test_clear_output_removes_only_what_the_job_wrote(fs, tmp_path):
    out = tmp_path / "out"
    O.commit_table(fs, str(out), table(["a"]))
    for name in (O.SUCCESS_FILE, O.SUMMARY_FILE, O.JOB_FILE):
        Path(O.state(str(out), name)).write_text("x")
    (out / "notes.txt").write_text("x")  # not the job's
    (tmp_path / "other").mkdir()  # a sibling of the output, not the job's either
    for legacy in ("_SUCCESS", ".diffedit/job.json", "_staging/x.tmp"):  # what earlier versions wrote
        (out / legacy).parent.mkdir(exist_ok=True)
        (out / legacy).write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.diffedit", "other", "out"]
    assert O.clear_output(fs, str(out)) == 1
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "out"]


def test_the_state_folder_is_a_hidden_sibling_and_an_output_needs_a_parent(tmp_path):
    """The run's state sits beside the output folder, hidden (issue 20 item 9: readers that list every
    file below the folder, polars, read only parts); an output with no parent folder is refused."""
    assert O.state_dir("bucket/edits/ds=2026-12-03/") == "bucket/edits/.ds=2026-12-03.diffedit"
    assert O.state("/data/out", O.SUCCESS_FILE) == "/data/.out.diffedit/_SUCCESS"
    for root in ("bucket", "bucket/", "/"):
        with pytest.raises(O.OutputLocationError, match="no parent folder"):
            O.state_dir(root)
    O.check_location(str(tmp_path / "out"), True)  # a plain folder (existing or not) is fine
    with pytest.raises(O.OutputLocationError, match="is a mount point"):
        O.check_location("/proc", True)  # its sibling /.proc.diffedit would be on another filesystem


def test_parts_carry_huggingface_image_features(fs, tmp_path):
    out = str(tmp_path / "out")
    path = O.commit_table(fs, out, table(["a"]))
    schema = pq.read_schema(path)
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    for column in R.IMAGE_COLUMNS:
        assert features[column] == {"_type": "Image"}
        assert schema.field(column).type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    assert features["id"] == {"dtype": "string", "_type": "Value"}
    assert set(features) == set(R.OUTPUT_SCHEMA.names)


def test_huggingface_datasets_reads_the_images(fs, tmp_path):
    """datasets (a dev dependency) shows the image columns as images."""
    import datasets
    from pipeline_testing import png_bytes

    out = str(tmp_path / "out")
    row = {
        "id": "a",
        "status": R.OK,
        "run_id": "r",
        "edited_image": {"bytes": png_bytes(0, (12, 8)), "path": None},
    }
    O.commit_table(fs, out, R.table_from_rows([row], R.OUTPUT_SCHEMA))
    loaded = datasets.load_dataset("parquet", data_files=O.part_files(fs, out), split="train")
    assert loaded.features["edited_image"] == datasets.Image()
    assert loaded[0]["edited_image"].size == (12, 8)


def test_rows_per_file_is_the_part_size(ray_cluster, tiny_model, tmp_path, monkeypatch):
    """7 rows, blocks of 2, one row per model call, rows_per_file 3: parts of 3, 3 and 1 rows."""
    write_manifest(tmp_path / "in" / "m.parquet",
                   [{"id": f"r{i}", "image_bytes": png_bytes(i), "query": "a blue circle"} for i in range(7)])  # fmt: skip
    params = ", ".join(f"{k}: {v}" for k, v in FAST_PARAMS.items())
    (tmp_path / "job.yaml").write_text(
        f"input: {{paths: [in]}}\noutput: {{path: out, rows_per_file: 3}}\nmodel: {{source: '{tiny_model}'}}\n"
        f"params: {{{params}}}\ncompute: {{batch_size: 1, rows_per_block: 2, torch_threads: 1}}\n"
    )
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", "job.yaml", "--address", ray_cluster])
    assert result.exit_code == 0, result.output
    sizes = sorted(pa.parquet.read_metadata(p).num_rows for p in (tmp_path / "out").glob("part-*.parquet"))
    assert sizes == [1, 3, 3]

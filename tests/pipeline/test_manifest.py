"""Manifests: files, globs, prefixes and hive folders, local and on S3; schema and id checks."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pipeline_testing import REPO, png_bytes, s3fs_for, write_manifest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import StorageConfig
from pipeline.manifest import ManifestError, check_schema, default_seed, inspect_manifest, resolve_files

LOCAL = StorageConfig()


def rows(prefix: str, n: int) -> list[dict]:
    return [
        {"id": f"{prefix}{i}", "image": f"s3://b/{i}.png", "caption": "", "query": "a red cat"}
        for i in range(n)
    ]


def test_files_globs_prefixes_and_hive_folders(tmp_path):
    write_manifest(tmp_path / "m" / "ds=2024-01-01" / "part-0.parquet", rows("a", 3))
    write_manifest(tmp_path / "m" / "ds=2024-01-02" / "part-0.parquet", rows("b", 2))
    write_manifest(tmp_path / "m" / "_temporary" / "part-9.parquet", rows("z", 1))  # skipped
    write_manifest(tmp_path / "m" / ".hidden.parquet", rows("y", 1))  # skipped
    (tmp_path / "m" / "_SUCCESS").write_text("")
    _, files = resolve_files([str(tmp_path / "m")], LOCAL)
    assert [f.split("/m/")[1] for f in files] == [
        "ds=2024-01-01/part-0.parquet",
        "ds=2024-01-02/part-0.parquet",
    ]
    info = inspect_manifest([str(tmp_path / "m")], LOCAL)
    assert info.num_rows == 5 and sorted(info.ids.to_pylist()) == ["a0", "a1", "a2", "b0", "b1"]
    info = inspect_manifest([str(tmp_path / "m" / "ds=*" / "*.parquet")], LOCAL)
    assert info.num_rows == 5
    info = inspect_manifest([str(tmp_path / "m" / "ds=2024-01-02" / "part-0.parquet")], LOCAL)
    assert info.num_rows == 2


def test_missing_inputs_are_named(tmp_path):
    with pytest.raises(ManifestError, match=r"input.paths\[0\]: .*nothing.parquet: no such file or prefix"):
        resolve_files([str(tmp_path / "nothing.parquet")], LOCAL)
    with pytest.raises(ManifestError, match="no Parquet file matches this glob"):
        resolve_files([str(tmp_path / "*.parquet")], LOCAL)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no Parquet file under this prefix"):
        resolve_files([str(tmp_path / "empty")], LOCAL)


def test_duplicate_null_and_empty_ids_stop_the_job(tmp_path):
    write_manifest(tmp_path / "a.parquet", rows("x", 3))
    write_manifest(tmp_path / "b.parquet", rows("x", 2))
    with pytest.raises(ManifestError, match=r"2 duplicate id\(s\): 'x0', 'x1'"):
        inspect_manifest([str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")], LOCAL)
    write_manifest(tmp_path / "n.parquet", [{"id": None, "image": "x", "query": "q"}], pa.schema(
        [("id", pa.string()), ("image", pa.string()), ("query", pa.string())]))  # fmt: skip
    with pytest.raises(ManifestError, match="1 row"):
        inspect_manifest([str(tmp_path / "n.parquet")], LOCAL)
    write_manifest(
        tmp_path / "e.parquet",
        [{"id": "", "image": "x", "query": "q"}, {"id": "a", "image": "x", "query": "q"}],
    )
    with pytest.raises(ManifestError, match=r"1 row\(s\) have an empty id"):
        inspect_manifest([str(tmp_path / "e.parquet")], LOCAL)


def test_schema_problems():
    ok = pa.schema([("id", pa.string()), ("image_bytes", pa.binary()), ("query", pa.large_string()),
                    ("seed", pa.int32()), ("guidance_scale", pa.int64()), ("caption", pa.null()), ("extra", pa.int8())])  # fmt: skip
    assert check_schema(ok, "f") == []
    bad = pa.schema([("id", pa.int64()), ("query", pa.string()), ("num_mask_draws", pa.float64()),
                     ("paste_background", pa.string())])  # fmt: skip
    problems = check_schema(bad, "f")
    assert any("column 'id' must be string, got int64" in p for p in problems)
    assert any("needs an 'image' (URI) or 'image_bytes'" in p for p in problems)
    assert any("'num_mask_draws' must be integer" in p for p in problems)
    assert any("'paste_background' must be boolean" in p for p in problems)
    assert any(
        "required column 'query'" in p
        for p in check_schema(pa.schema([("id", pa.string()), ("image", pa.string())]), "f")
    )


def test_ignored_columns_are_reported(tmp_path):
    write_manifest(
        tmp_path / "a.parquet", [{"id": "a", "image_bytes": png_bytes(), "query": "q", "note": "x"}]
    )
    info = inspect_manifest([str(tmp_path / "a.parquet")], LOCAL)
    assert info.ignored_columns == ("note",)
    assert info.columns == ("id", "image_bytes", "query")


def test_default_seed_is_stable_and_in_range():
    assert default_seed("row-1") == default_seed("row-1") != default_seed("row-2")
    assert 0 <= default_seed("x") < 2**63


def test_manifest_on_s3(s3):
    fs = s3fs_for(s3)
    write_manifest("test-bucket/manifests/ds=1/part-0.parquet", rows("s", 4), fs=fs)
    write_manifest("test-bucket/manifests/ds=2/part-0.parquet", rows("t", 1), fs=fs)
    storage = StorageConfig(endpoint_url=s3["endpoint_url"])
    info = inspect_manifest(["s3://test-bucket/manifests/"], storage)
    assert info.num_rows == 5 and len(info.files) == 2
    with pytest.raises(ManifestError, match="no such file or prefix"):
        inspect_manifest(["s3://test-bucket/nothing/"], storage)


def _validate(tmp_path, paths: list[str]):
    (tmp_path / "job.yaml").write_text(
        f"input: {{paths: {paths}}}\noutput: {{path: {tmp_path / 'out'}}}\n"
        f"model: {{source: {REPO / 'models' / 'shapes-v3'}}}\n"
    )
    return CliRunner().invoke(app, ["validate", str(tmp_path / "job.yaml")])


def test_validate_names_a_missing_input_and_lists_ignored_columns(tmp_path):
    """README: a missing input path, an empty glob or an empty prefix is an error naming it (exit 3,
    one line, nothing written); other columns are ignored and ``validate`` lists them."""
    (tmp_path / "empty").mkdir()
    for path, message in [
        (tmp_path / "nothing.parquet", "nothing.parquet: no such file or prefix"),
        (tmp_path / "*.parquet", "no Parquet file matches this glob"),
        (tmp_path / "empty", "no Parquet file under this prefix"),
    ]:
        done = _validate(tmp_path, [str(path)])
        assert done.exit_code == 3, done.output
        (line,) = [ln for ln in done.output.splitlines() if ln.startswith("error:")]
        assert line.startswith("error: input: ") and message in line and str(tmp_path) in line, line
        assert not (tmp_path / "out").exists() and not (tmp_path / ".out.diffedit").exists()
    write_manifest(tmp_path / "m" / "a.parquet",
                   [{"id": "a", "image_bytes": png_bytes(), "query": "q", "note": "x", "score": 1}])  # fmt: skip
    done = _validate(tmp_path, [str(tmp_path / "m")])
    assert done.exit_code == 0, done.output
    assert "input: ignored columns ['note', 'score']" in done.output

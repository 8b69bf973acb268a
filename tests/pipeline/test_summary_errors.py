"""Issue 10, item 10: the summary groups failed rows by error class (the message without what is
particular to the row), with counts and example ids; the table shows the top classes and "and N more"."""

from __future__ import annotations

from pipeline.job import error_class, group_errors, summary_table


def test_error_class_strips_uris_paths_ids_and_numbers():
    assert error_class("image s3://b/imgs/1.png not found") == "image <uri> not found"
    assert error_class("image /data/imgs/2.png not found") == "image <path> not found"
    assert (
        error_class(
            "image s3://b/x.png is 9000x9000 = 81000000 pixels, above images.max_pixels = 50000000 (decompression-bomb limit)"
        )
        == "image <uri> is <n>x<n> = <n> pixels, above images.max_pixels = <n> (decompression-bomb limit)"
    )
    assert (
        error_class("row r-17: invalid DiffEdit parameters: x", "r-17")
        == "row <id>: invalid DiffEdit parameters: x"
    )
    assert error_class("image https://u:p@h.example/a.png?sig=1 not found") == "image <uri> not found"


def test_group_errors_counts_and_examples():
    ids = [f"r{i:02d}" for i in range(30)] + ["ok"]
    errors = [f"image s3://b/{i}.png not found" for i in range(20)]
    errors += [f"image s3://b/{i}.png has unsupported mode 'F'" for i in range(7)]
    errors += ["query (the edit text) is empty"] * 3 + [None]
    groups = group_errors(ids, errors)
    assert [(g["class"], g["count"]) for g in groups] == [
        ("image <uri> not found", 20),
        ("image <uri> has unsupported mode 'F'", 7),
        ("query (the edit text) is empty", 3),
    ]
    assert groups[0]["examples"] == ["r00", "r01", "r02", "r03", "r04"]
    assert groups[0]["example_error"] == "image s3://b/0.png not found"
    assert sum(g["count"] for g in groups) == 30


def test_table_shows_the_top_classes_and_how_many_more():
    groups = group_errors([f"r{i}" for i in range(8)], [f"error kind {chr(97 + i)}" for i in range(8)])
    table = summary_table({"errors": groups, "output": {"rows": 8, "failed": 8}})
    assert "errors" in table and "8 class(es)" in table
    assert "error kind a (e.g. r0)" in table
    assert "error kind e" in table and "error kind f" not in table
    assert "and 3 more class(es), 3 row(s)" in table

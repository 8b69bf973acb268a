"""Manifest builders: COCO recolouring on a tiny COCO-format fixture; the shapes manifest."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from pipeline_testing import COCO
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.prepare import coco_recolor_rows, recolour


def test_recolour_rules():
    query, source, target = recolour("A red bus parked next to a red car.", 0, "11")
    assert source == "red" and target != "red"
    article = "an" if target[0] in "aeiou" else "a"
    assert query == f"{article.capitalize()} {target} bus parked next to {article} {target} car."
    assert recolour("A man eating an orange on a bench.", 0, "21") is None  # the fruit
    q, source, _ = recolour("An orange cat on a grey sofa.", 0, "31")
    assert source == "gray" and q.startswith("An orange cat on a")  # "an orange" kept, grey recoloured
    assert recolour("Red", 0, "k")[0][0].isupper()
    assert recolour("a bus", 0, "k") is None


def test_coco_rows_are_deterministic_and_counted():
    rows, stats = coco_recolor_rows(COCO, "s3://bucket/coco/train2017", seed=0)
    again, _ = coco_recolor_rows(COCO, "s3://bucket/coco/train2017/", seed=0)
    assert rows == again
    assert (stats.images, stats.captions, stats.with_colour, stats.without_colour) == (4, 9, 4, 5)
    assert [r["id"] for r in rows] == ["coco-1-11", "coco-3-31", "coco-4-41"]  # one per image
    assert rows[0]["image"] == "s3://bucket/coco/train2017/000000000001.jpg"
    assert rows[0]["caption"] == "A red bus parked next to a red car."
    assert all(r["query"] != r["caption"] for r in rows)
    two, stats2 = coco_recolor_rows(COCO, "s3://b/", per_image=2, max_rows=3)
    assert [r["id"] for r in two] == ["coco-1-11", "coco-1-13", "coco-3-31"] and stats2.rows == 3
    with pytest.raises(ValueError, match="not a COCO captions file"):
        coco_recolor_rows({"images": []}, "s3://b/")


def test_prepare_coco_command(tmp_path):
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps(COCO))
    result = CliRunner().invoke(
        app,
        [
            "prepare",
            "coco-recolor",
            "--captions",
            str(captions),
            "--images",
            "s3://b/coco/",
            "--out",
            str(tmp_path / "m"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "9 captions of 4 images: 4 with a colour word, 5 without (left out); wrote 3 rows" in result.output
    table = pq.read_table(tmp_path / "m" / "manifest.parquet")
    assert table.column("id").to_pylist() == ["coco-1-11", "coco-3-31", "coco-4-41"]


def test_prepare_shapes_command(tmp_path):
    out = tmp_path / "shapes"
    result = CliRunner().invoke(app, ["prepare", "shapes", "--out", str(out), "--rows", "3"])
    assert result.exit_code == 0, result.output
    table = pq.read_table(out / "manifest.parquet")
    assert table.num_rows == 3 and len(set(table.column("id").to_pylist())) == 3
    assert set(table.column_names) >= {"id", "image_bytes", "caption", "query"}
    again = tmp_path / "again"
    CliRunner().invoke(app, ["prepare", "shapes", "--out", str(again), "--rows", "3"])
    assert pq.read_table(again / "manifest.parquet").equals(table)

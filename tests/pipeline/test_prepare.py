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
    q, source, target = recolour("An orange cat on a grey sofa.", 0, "31")
    assert source == "orange" and target not in ("orange", "gray")  # a cat's colour (issue 10 item 9)
    assert q.endswith(f"{target} cat on a grey sofa.")
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
    assert (
        "9 captions of 4 images: 4 with a colour word, 5 without (left out); 0 with an image id missing "
        "from images (left out); wrote 3 rows" in result.output
    )
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


# --------------------------------------------------------------------------- issue 10, item 9


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        # the target colour is never one already in the caption
        ("A black and white photo of a cat.", r"A (?!white)\w+ and white photo of a cat\."),
        ("a white and black dog", r"an? (?!black)\w+ and black dog"),
        # "an orange" + a noun is the colour; + nothing, punctuation, a preposition or a verb: the fruit
        ("An orange cat on a grey sofa.", r"An? (?!orange|gray)\w+ cat on a grey sofa\."),
        ("an orange countertop in a kitchen", r"an? (?!orange)\w+ countertop in a kitchen"),
        ("A man eating an orange on a bench.", None),
        ("An orange.", None),
        ("An orange sliced in half.", None),
        (
            "A boy holds an orange and a red apple.",
            r"A boy holds an orange and an? (?!red|orange)\w+ apple\.",
        ),
        # the case pattern of the word (and of its article) is kept
        ("A RED STOP SIGN", r"AN? (?!RED)[A-Z]+ STOP SIGN"),
        ("A Red Stop Sign", r"An? (?!Red)[A-Z][a-z]+ Stop Sign"),
        ("a Red double decker bus", r"an? (?!Red)[A-Z][a-z]+ double decker bus"),
        ("red", r"(?!red)[a-z]+"),
        # names are not colours
        ("The Red Sox play at home in red shirts.", r"The Red Sox play at home in (?!red)[a-z]+ shirts\."),
        ("A Black Lab runs.", None),
        ("a black lab sleeps on a red rug", r"a black lab sleeps on an? (?!red|black)[a-z]+ rug"),
    ],
)
def test_recolour_cases(caption, expected):
    import re

    for seed in range(4):  # several target colours, the same rule
        result = recolour(caption, seed, "k")
        if expected is None:
            assert result is None, result
            continue
        assert result is not None, caption
        query, source, target = result
        assert re.fullmatch(expected, query), (caption, query)
        assert target != source and target not in {
            "gray" if c == "grey" else c for c in caption.lower().split()
        }


def test_captions_whose_image_is_missing_are_counted():
    data = {
        "images": [{"id": 1, "file_name": "1.jpg"}],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "a red car"},
            {"id": 20, "image_id": 2, "caption": "a blue car"},  # image 2 is not in images
            {"id": 30, "image_id": 3, "caption": "a car"},
        ],
    }
    rows, stats = coco_recolor_rows(data, "s3://b/")
    assert [r["id"] for r in rows] == ["coco-1-10"]
    assert (stats.with_colour, stats.without_colour, stats.missing_image, stats.rows) == (2, 1, 1, 1)

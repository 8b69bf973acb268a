"""Issue 20, items 2 and 7: the allow-list judges a local symbolic link by where it leads, and a URI
with user info is refused with a message that does not show an address that looks allowed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pipeline_testing import png_bytes

from diffedit.params import EditParams
from pipeline import rows as R
from pipeline.config import ImagesConfig, StorageConfig
from pipeline.images import ImageError, fetch, is_allowed
from pipeline.stages import prepare_row


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """``allowed/`` (an image, a link to it, links to a file and a folder outside) and ``outside/``."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "in.png").write_bytes(png_bytes(1, (8, 8)))
    (outside / "secret.png").write_bytes(png_bytes(2, (8, 8)))
    (allowed / "link-in.png").symlink_to(allowed / "in.png")
    (allowed / "link-out.png").symlink_to(outside / "secret.png")
    (allowed / "dir-out").symlink_to(outside, target_is_directory=True)
    return allowed, outside


def test_a_link_out_of_an_allowed_folder_is_outside(folders):
    allowed, outside = folders
    allow = (str(allowed),)
    assert is_allowed(str(allowed / "in.png"), allow)
    assert not is_allowed(str(outside / "secret.png"), allow)
    assert is_allowed(str(allowed / "link-in.png"), allow)  # a link that stays inside
    assert not is_allowed(str(allowed / "link-out.png"), allow)  # a file link out
    assert not is_allowed(str(allowed / "dir-out" / "secret.png"), allow)  # a folder link out
    assert not is_allowed(f"file://{allowed}/dir-out/secret.png", allow)
    images = ImagesConfig(allow=allow)
    for uri in (allowed / "link-out.png", allowed / "dir-out" / "secret.png"):
        with pytest.raises(ImageError, match="not in the allow-list"):
            fetch(str(uri), images, StorageConfig())
    assert fetch(str(allowed / "link-in.png"), images, StorageConfig()) == (allowed / "in.png").read_bytes()


def test_an_allowed_folder_that_is_itself_a_link_still_allows_its_files(folders, tmp_path):
    allowed, _ = folders
    alias = tmp_path / "alias"
    alias.symlink_to(allowed, target_is_directory=True)
    assert is_allowed(str(alias / "in.png"), (str(alias),))
    assert is_allowed(str(allowed / "in.png"), (str(alias),))
    assert not is_allowed(str(alias / "link-out.png"), (str(alias),))


def test_a_row_whose_image_links_out_fails_instead_of_reading_the_outside_file(folders):
    allowed, _ = folders
    record = {"id": "r1", "image": str(allowed / "dir-out" / "secret.png"), "query": "a blue circle"}
    row = prepare_row(record, EditParams(), ImagesConfig(allow=(str(allowed),)), StorageConfig())
    assert row["status"] == R.FAILED
    assert "not in the allow-list" in row["error"]
    assert "pixels" not in row


@pytest.mark.parametrize(
    ("uri", "looks_allowed"),
    [
        ("https://user@good.example/x.png", "https://good.example/x.png"),
        ("https://user:pw@good.example/x.png", "https://good.example/x.png"),
        ("s3://key:secret@bucket/x.png", "s3://bucket/x.png"),
    ],
)
def test_a_uri_with_user_info_is_refused_saying_so(uri, looks_allowed):
    allow = ("https://good.example", "s3://bucket")
    with pytest.raises(ImageError) as info:
        fetch(uri, ImagesConfig(allow=allow), StorageConfig())
    message = str(info.value)
    assert "user info" in message  # says why, though the host and path are inside the allow-list
    assert f"{looks_allowed} " not in message  # never the bare address, which reads as allowed
    assert "pw" not in message and "secret" not in message  # no credentials either
    assert os.path.basename(looks_allowed) in message  # the row can still be found


def test_a_uri_outside_the_allow_list_keeps_its_message():
    with pytest.raises(ImageError, match=r"image URI https://evil\.example/x\.png is not in the allow-list"):
        fetch("https://evil.example/x.png", ImagesConfig(allow=("https://good.example",)), StorageConfig())


def test_validate_shows_a_refused_user_info_uri_marked(tmp_path):
    from pipeline_testing import write_manifest

    from pipeline.config import build_job
    from pipeline.manifest import inspect_manifest
    from pipeline.validate import _check_image_uris

    write_manifest(
        tmp_path / "m.parquet", [{"id": "a", "image": "https://user@good.example/x.png", "query": "q"}]
    )
    job = build_job(
        {"input": {"paths": [str(tmp_path / "m.parquet")]}, "output": {"path": str(tmp_path / "out")},
         "model": {"source": str(tmp_path)}, "images": {"allow": ["https://good.example"]}}
    )  # fmt: skip
    (line,) = _check_image_uris(job, inspect_manifest(job.input.paths, job.storage))
    assert "WARNING 1 of 1 image URIs are outside images.allow" in line
    assert "https://***@good.example/x.png" in line

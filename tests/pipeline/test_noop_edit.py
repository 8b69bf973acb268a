"""Issue 10, item 8: an edit whose query and caption are the same tokens after the text encoder's
truncation is flagged (``warning`` "unchanged: ...", counted in the summary), a truncated prompt is
said, and ``validate`` warns about such rows from the tokenizer files alone."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch
from pipeline_testing import FAST_PARAMS, REPO, png_bytes, write_manifest

from diffedit.editor import DiffEditor
from diffedit.params import EditParams
from diffedit.tiny import tiny_bundle
from diffedit.tokens import bundle_tokenizers, check_prompts, load_tokenizers
from pipeline import rows as R
from pipeline.config import ImagesConfig, StorageConfig, build_job
from pipeline.stages import edit_rows, fetch_rows
from pipeline.validate import check_texts

SHAPES = REPO / "models" / "shapes-v3"
PAD = "a big scene with many things " * 6  # far more than 24 tokens


def test_check_prompts_on_the_bundled_model_tokenizer():
    tokenizers = load_tokenizers(SHAPES)
    assert len(tokenizers) == 1 and tokenizers[0].model_max_length == 24
    fine = check_prompts(tokenizers, "a blue circle", "a red circle")
    assert not fine.unchanged and fine.truncated == () and fine.warnings() == []
    beyond = check_prompts(tokenizers, PAD + "and a blue circle", PAD + "and a red circle")
    assert beyond.unchanged and beyond.truncated == ("query", "caption")
    assert beyond.warnings() == [
        "unchanged: query and caption are the same after truncation to 24 tokens (the edit is a no-op)",
        "truncated: query and caption cut at 24 tokens",
    ]
    assert check_prompts(tokenizers, "a red circle", "a red circle").unchanged
    # SDXL: two tokenizers; a no-op only if it is one for both
    assert not check_prompts([tokenizers[0], _Longer(tokenizers[0])], PAD + "blue", PAD + "red").unchanged
    assert check_prompts([], "a", "a") == check_prompts([], "a", "b")  # nothing known, nothing flagged


class _Longer:
    """A tokenizer that keeps 1000 tokens (a second text encoder with a longer context)."""

    model_max_length = 1000

    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(self, text, **kwargs):
        kwargs.pop("max_length", None)
        kwargs.pop("truncation", None)
        return self.inner(text, truncation=False, verbose=False)


def test_edit_stage_flags_a_no_op_edit_and_a_truncated_prompt():
    bundle = tiny_bundle(0)  # its tokenizer keeps 16 tokens
    params = EditParams.from_dict(FAST_PARAMS)
    rows = [
        {"id": "real", "image_bytes": png_bytes(1), "caption": "a red circle", "query": "a blue circle"},
        {"id": "noop", "image_bytes": png_bytes(2), "caption": PAD + "red", "query": PAD + "blue"},
    ]
    schema = pa.schema(
        [("id", pa.string()), ("image_bytes", pa.binary()), ("caption", pa.string()), ("query", pa.string())]
    )
    fetched = fetch_rows(
        pa.Table.from_pylist(rows, schema=schema),
        params=params,
        images=ImagesConfig(),
        storage=StorageConfig(),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        editor = DiffEditor(bundle, params, max_batch=16)
        out = {
            r["id"]: r
            for r in edit_rows(fetched, editor, "m", "h", tokenizers=bundle_tokenizers(bundle)).to_pylist()
        }
    finally:
        torch.set_num_threads(threads)
    assert out["real"]["status"] == R.OK and out["real"]["warning"] is None
    assert out["noop"]["status"] == R.OK  # still ok: the consumers' status stays ok/failed
    assert out["noop"]["warning"].startswith(
        "unchanged: query and caption are the same after truncation to 16 tokens"
    )
    assert "truncated: query and caption cut at 16 tokens" in out["noop"]["warning"]
    assert out["noop"]["mask_area"] == pytest.approx(0.0, abs=1e-6)  # what the flag explains


def test_validate_warns_about_rows_that_cannot_change(tmp_path):
    write_manifest(
        tmp_path / "m.parquet",
        [{"id": "ok", "image": "x", "caption": "a red circle", "query": "a blue circle"},
         {"id": "noop", "image": "x", "caption": PAD + "red", "query": PAD + "blue"},
         {"id": "long", "image": "x", "caption": "a red circle " + PAD, "query": "a blue circle " + PAD}],
    )  # fmt: skip
    job = build_job({"input": {"paths": [str(tmp_path / "m.parquet")]}, "output": {"path": str(tmp_path / "o")},
                     "model": {"source": str(SHAPES)}})  # fmt: skip
    lines = check_texts(job, [str(tmp_path / "m.parquet")])
    assert lines == [
        "text: WARNING 1 of 3 rows have query and caption equal after truncation to 24 tokens (the edit would "
        "do nothing), e.g. ['noop']",
        "text: WARNING 2 of 3 rows have a caption or query longer than 24 tokens (cut), e.g. ['noop', 'long']",
    ]


def test_flow_model_tokenizers_are_read_as_their_own_classes(tmp_path):
    """validate reads SD3's three and FLUX.1's two tokenizers from their files, each of the class
    model_index.json names (T5's as T5TokenizerFast, not as CLIP's), the ids the loaded bundle's own
    tokenizers give; a query that differs from its caption only beyond CLIP's limit is no no-op for a
    model whose T5 sees it."""
    from diffedit.tiny import save_tiny_family
    from diffedit.tiny_flow import tiny_flux_bundle, tiny_sd3_bundle

    for family, make, expected in (
        ("sd3", tiny_sd3_bundle, ["CLIPTokenizer", "CLIPTokenizer", "T5Tokenizer"]),
        ("flux", tiny_flux_bundle, ["CLIPTokenizer", "T5Tokenizer"]),
    ):
        loaded = load_tokenizers(save_tiny_family(family, tmp_path / family))
        assert [type(t).__name__ for t in loaded] == expected, family
        own = bundle_tokenizers(make(seed=0))
        for a, b in zip(loaded, own, strict=True):
            assert a("a red star on the background").input_ids == b("a red star on the background").input_ids
        long = " ".join(["blue"] * 30)  # beyond the tiny CLIP's 16 tokens, within T5's 512
        check = check_prompts(loaded, long + " red circle", long + " green circle")
        assert not check.unchanged and check.truncated == ("query", "caption")

"""Row schemas: the working rows between stages and the output rows, plus the Hugging Face metadata.

Output rows (one per input id, see README.md, "The batch job"):

* ``id``, ``status`` (``ok`` | ``failed``), ``error`` (null when ok), ``caption``, ``query``;
* ``warning``: null, or ``; ``-joined warnings each starting with a code: ``unchanged:`` (query and
  caption are the same tokens after truncation: the edit is a no-op; the row stays ``ok``),
  ``truncated:`` (a prompt was cut at the text encoder's token limit);
* ``input_image``, ``edited_image``, ``mask``: PNG in Hugging Face datasets' Image layout, a struct of
  ``bytes`` and ``path`` (null on failed rows); the mask is the binary edit mask, 0 or 255;
* ``width``, ``height`` (the input's size after EXIF orientation), ``mask_area`` (fraction edited);
* ``seed`` and every effective DiffEdit parameter, one column each (the manifest's override names);
* ``model`` (the source without credentials), ``model_weights_sha256``, ``model_family`` (``sd`` or
  ``sdxl``), ``diffedit_version``, ``diffusers_version``, ``torch_version`` (of the actor that edited
  the row), ``run_id`` (the run that produced the row), ``input_sha256`` (sha256 of the decoded RGB
  pixels with their size: equal for the same picture in any file format);
* scores (``diffedit.scores``; null when switched off or on failed rows): ``score_psnr`` (dB, capped
  at 100), ``score_ssim`` ([-1, 1]), ``score_mask_components`` (count), ``score_mask_largest``
  ([0, 1]), ``score_alignment`` (squared noise-prediction error gained, > 0: towards the query);
* selection (``diffedit.select``): ``candidate`` (which candidate was kept, 0 = the plain edit),
  ``candidate_seed`` (the seed it was edited with), ``candidates`` (every candidate: its index, seed
  and scores);
* ``keep`` (true: ok and within every ``filter`` bound) and ``reject_reason`` (null when kept: the
  failed bounds, ``;``-joined, e.g. ``score_alignment 0.12 < min 0.5``, or ``failed``);
* ``unet_evals`` and seconds per stage: ``seconds_fetch``, ``seconds_mask``, ``seconds_encode``,
  ``seconds_decode``, ``seconds_vae``, ``seconds_edit`` (model total), ``seconds_png``.
"""

from __future__ import annotations

import json
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import pyarrow as pa

from diffedit.params import EditParams
from diffedit.scores import SCORE_NAMES

OK, FAILED = "ok", "failed"
#: Codes that start a ``warning`` (see the module docstring).
UNCHANGED, TRUNCATED = "unchanged", "truncated"

#: Hugging Face datasets' Image storage type.
IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
IMAGE_COLUMNS = ("input_image", "edited_image", "mask")
STAGE_SECONDS = ("fetch", "mask", "encode", "decode", "score", "vae", "edit", "png")
#: The score columns and their Arrow types (names are ``score_`` + ``diffedit.scores.SCORE_NAMES``).
SCORE_FIELDS: list[pa.Field] = [
    pa.field(f"score_{name}", pa.int64() if name == "mask_components" else pa.float64())
    for name in SCORE_NAMES
]
CANDIDATE_TYPE = pa.struct([pa.field("candidate", pa.int32()), pa.field("seed", pa.int64()), *SCORE_FIELDS])


def param_kind(hint: Any) -> str:
    """ "bool", "int", "float" or "str" for an EditParams field type (``X | None`` counts as X;
    Literal choices of strings are strings)."""
    args = (
        [a for a in get_args(hint) if a is not type(None)]
        if get_origin(hint) in (Union, UnionType)
        else [hint]
    )
    base = args[0] if len(args) == 1 else str
    return {bool: "bool", int: "int", float: "float"}.get(base, "str")


def _param_fields() -> list[pa.Field]:
    hints = get_type_hints(EditParams)
    arrow = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "str": pa.string()}
    return [pa.field(name, arrow[param_kind(hints[name])]) for name in EditParams.field_names()]


PARAM_FIELDS: list[pa.Field] = _param_fields()

OUTPUT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("keep", pa.bool_()),
        pa.field("reject_reason", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("query", pa.string()),
        pa.field("warning", pa.string()),
        pa.field("input_image", IMAGE_TYPE),
        pa.field("edited_image", IMAGE_TYPE),
        pa.field("mask", IMAGE_TYPE),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("mask_area", pa.float64()),
        *SCORE_FIELDS,
        pa.field("seed", pa.int64()),
        pa.field("candidate", pa.int32()),
        pa.field("candidate_seed", pa.int64()),
        pa.field("candidates", pa.list_(CANDIDATE_TYPE)),
        *PARAM_FIELDS,
        pa.field("model", pa.string()),
        pa.field("model_weights_sha256", pa.string()),
        pa.field("model_family", pa.string()),
        pa.field("diffedit_version", pa.string()),
        pa.field("diffusers_version", pa.string()),
        pa.field("torch_version", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("input_sha256", pa.string()),
        pa.field("unet_evals", pa.int64()),
        *[pa.field(f"seconds_{s}", pa.float64()) for s in STAGE_SECONDS],
    ]
)

#: Working rows after the fetch stage (input to the model stage).
FETCHED_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("status", pa.string()),
        pa.field("error", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("query", pa.string()),
        pa.field("warning", pa.string()),
        pa.field("seed", pa.int64()),
        *PARAM_FIELDS,
        pa.field("input_path", pa.string()),
        pa.field("input_sha256", pa.string()),
        # the file's own bytes, kept for ``output.input_image: original`` when they show the input
        # (``pipeline.images.DecodedImage.original_shows_input``); else null
        pa.field("input_bytes", pa.binary()),
        pa.field("pixels", pa.binary()),  # raw RGB, row-major, width x height x 3
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        # the size the model works at (diffedit.images.model_resolution): the regrouping key
        # (pipeline.grouping); null on failed rows or when the model's geometry is unknown
        pa.field("model_width", pa.int32()),
        pa.field("model_height", pa.int32()),
        pa.field("seconds_fetch", pa.float64()),
    ]
)

#: Working rows after the model stage (input to the encode stage).
EDITED_SCHEMA = pa.schema(
    [
        *[f for f in FETCHED_SCHEMA],
        pa.field("edited_pixels", pa.binary()),  # raw RGB at width x height
        pa.field("mask_pixels", pa.binary()),  # raw L (0/255) at width x height
        pa.field("mask_area", pa.float64()),
        *SCORE_FIELDS,
        pa.field("candidate", pa.int32()),
        pa.field("candidate_seed", pa.int64()),
        pa.field("candidates", pa.list_(CANDIDATE_TYPE)),
        pa.field("model", pa.string()),
        pa.field("model_weights_sha256", pa.string()),
        pa.field("model_family", pa.string()),
        pa.field("diffusers_version", pa.string()),
        pa.field("torch_version", pa.string()),
        pa.field("unet_evals", pa.int64()),
        *[pa.field(f"seconds_{s}", pa.float64()) for s in STAGE_SECONDS if s not in ("fetch", "png")],
    ]
)


def table_from_rows(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """A table of ``schema`` from row dicts (missing keys are null)."""
    return pa.Table.from_pylist(
        [{name: row.get(name) for name in schema.names} for row in rows], schema=schema
    )


def huggingface_features(schema: pa.Schema = OUTPUT_SCHEMA) -> dict[str, Any]:
    """The ``datasets`` Features of the output, so that ``datasets`` shows the image columns as images."""
    dtypes = {
        pa.string(): "string",
        pa.int64(): "int64",
        pa.int32(): "int32",
        pa.float64(): "float64",
        pa.bool_(): "bool",
    }

    def feature(t: pa.DataType) -> Any:
        if pa.types.is_list(t):  # a list of records: written as [features], read by every datasets version
            return [{f.name: feature(f.type) for f in t.value_type}]
        return {"dtype": dtypes[t], "_type": "Value"}

    features: dict[str, Any] = {}
    for f in schema:
        features[f.name] = {"_type": "Image"} if f.type == IMAGE_TYPE else feature(f.type)
    return features


def output_schema_with_metadata() -> pa.Schema:
    """``OUTPUT_SCHEMA`` carrying the ``huggingface`` metadata key that ``datasets`` reads."""
    meta = {"info": {"features": huggingface_features()}}
    return OUTPUT_SCHEMA.with_metadata({b"huggingface": json.dumps(meta).encode()})

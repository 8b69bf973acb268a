"""The three per-row stages of the job, as functions over pyarrow tables (Ray Data batches).

1. ``fetch_rows`` (CPU tasks): drops rows already committed by an earlier run, checks each row's text,
   seed and parameter overrides (against the job's ``limits``), fetches and decodes its image
   (``pipeline.images``); a bad row becomes ``failed`` with its error and goes on through the other
   stages untouched. Storage that keeps failing is not the row's fault: ``TransientStorageError``
   propagates, the task fails, the run exits 1 and the row is not committed (``pipeline.faults``).
2. ``EditStage`` (actors): holds the model and a ``DiffEditor`` resident and edits the ``ok`` rows,
   with the job's scores and best-of-K selection (``scoring``, ``selection``: ``diffedit.scores``,
   ``diffedit.select``); a row whose query and caption tokenize identically (a no-op edit) or whose
   prompt was cut at the text encoder's limit gets a ``warning`` (``diffedit.tokens``).
3. ``encode_rows`` (CPU tasks): encodes the input (its original bytes, a reference or PNG), the edit
   (PNG, WebP or JPEG) and the mask (PNG) into the output schema (``output.input_image``,
   ``image_format``), and applies the job's ``filter`` (``keep``, ``reject_reason``: ``pipeline.keep``).

Nothing here imports Ray: the stages are plain callables, tested directly.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from diffedit.images import model_resolution
from diffedit.params import EditParams
from diffedit.scores import SCORE_NAMES
from pipeline import rows as R
from pipeline.config import (
    FilterConfig,
    ImagesConfig,
    JobConfig,
    LimitsConfig,
    OutputConfig,
    StorageConfig,
    scoring_of,
)
from pipeline.grouping import chunks
from pipeline.images import ImageError, encode_image, encode_png, load_row_image
from pipeline.keep import keep_verdict
from pipeline.limits import check_limits
from pipeline.manifest import IMAGE, IMAGE_BYTES, MAX_SEED, OVERRIDE_COLUMNS, default_seed
from pipeline.plan import available_cpus
from pipeline.sizing import Geometry, batching
from pipeline.storage import redact, scheme_of, storage_options

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- 1. fetch


def fetch_rows(
    batch: pa.Table,
    *,
    params: EditParams,
    images: ImagesConfig,
    storage: StorageConfig,
    done: Collection[str] = frozenset(),
    threads: int = 8,
    limits: LimitsConfig | None = None,
    geometry: Geometry | None = None,
    input_image: str = "png",
) -> pa.Table:
    """Manifest rows -> working rows (``rows.FETCHED_SCHEMA``); rows whose id is in ``done`` are dropped.
    Raises ``TransientStorageError`` when storage keeps failing for a row (none of the batch is kept).
    ``geometry`` (the model's, ``pipeline.sizing``): each ok row gets its model resolution
    (``model_width``, ``model_height``), the key ``pipeline.grouping`` regroups rows by.
    ``input_image`` (``output.input_image``): whether a row keeps its file's bytes (``input_bytes``)
    for the encode stage."""
    records = [r for r in batch.to_pylist() if r["id"] not in done]
    if not records:
        return R.FETCHED_SCHEMA.empty_table()
    limits = limits or LimitsConfig()
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(records)))) as pool:
        out = list(pool.map(lambda r: prepare_row(r, params, images, storage, limits, input_image), records))
    if geometry is not None:
        for row in out:
            if row["status"] == R.OK:
                size = model_resolution(
                    row["width"], row["height"], geometry.native_size, geometry.pixel_multiple
                )
                row["model_width"], row["model_height"] = size
    return R.table_from_rows(out, R.FETCHED_SCHEMA)


def prepare_row(
    record: dict[str, Any],
    params: EditParams,
    images: ImagesConfig,
    storage: StorageConfig,
    limits: LimitsConfig | None = None,
    input_image: str = "png",
) -> dict[str, Any]:
    """One manifest row -> one working row, ``ok`` with its decoded pixels or ``failed`` with an error.
    The file's own bytes are kept (``input_bytes``) where ``input_image`` will store them: ``original``,
    or ``reference`` for a row without a URI, and only when they show the edited pixels.
    A ``TransientStorageError`` is not caught: it is not the row's answer."""
    start = time.perf_counter()
    row_id = record["id"]
    uri = record.get(IMAGE)
    row: dict[str, Any] = {
        "id": row_id,
        "status": R.OK,
        "error": None,
        "caption": record.get("caption") or "",
        "query": record.get("query"),
        "input_path": redact(uri) if isinstance(uri, str) and uri else None,
    }
    try:
        effective = row_params(record, params)
        row.update(effective.to_dict())
        seed = record.get("seed")
        seed = default_seed(row_id) if seed is None else int(seed)
        if not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed must be in [0, 2**63 - 1], got {seed}")
        row["seed"] = seed
        query = record.get("query")
        if query is None or not str(query).strip():
            raise ValueError("query (the edit text) is empty")
        check_limits(effective, limits or LimitsConfig(), {"query": str(query), "caption": row["caption"]})
        decoded = load_row_image(uri, record.get(IMAGE_BYTES), images, storage)
        pixels = decoded.image.tobytes()
        stores_bytes = input_image == "original" or (input_image == "reference" and not row["input_path"])
        row.update(
            input_bytes=decoded.data if stores_bytes and decoded.original_shows_input else None,
            pixels=pixels,
            width=decoded.width,
            height=decoded.height,
            input_sha256=pixels_sha256(pixels, decoded.width, decoded.height),
        )
    except (ImageError, ValueError, TypeError) as exc:
        row.update(status=R.FAILED, error=str(exc))
    row["seconds_fetch"] = time.perf_counter() - start
    return row


def pixels_sha256(rgb: bytes, width: int, height: int) -> str:
    """The content hash of a decoded image: sha256 of ``"{width}x{height}:"`` and its raw RGB bytes, so
    the same picture has the same hash in any file format or compression."""
    return hashlib.sha256(f"{width}x{height}:".encode() + rgb).hexdigest()


def row_params(record: dict[str, Any], params: EditParams) -> EditParams:
    """The job's parameters with this row's non-null override columns applied (strictly checked)."""
    overrides = {k: _plain(record[k]) for k in OVERRIDE_COLUMNS if record.get(k) is not None}
    if not overrides:
        return params
    try:
        return EditParams.from_dict(overrides, source="parameter override", base=params)
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars (EditParams checks types strictly)."""
    return value.item() if isinstance(value, np.generic) else value


# --------------------------------------------------------------------------- 2. edit


class EditStage:
    """The Ray Data callable class of the model stage: one resident ``DiffEditor`` per actor."""

    def __init__(self, job: JobConfig, model_label: str | None = None) -> None:
        """``model_label``: the ``model`` column's value, the source as the job wrote it (default: the
        source loaded, without credentials)."""
        import diffusers
        import torch

        from diffedit.editor import DiffEditor
        from diffedit.loading import load_bundle
        from diffedit.select import Selection

        compute = job.compute
        threads = compute.torch_threads or (
            max(1, available_cpus() // compute.max_actors)
            if compute.device == "cpu"
            else max(1, int(compute.cpus_per_actor))
        )
        torch.set_num_threads(threads)
        source = job.model.source
        options = storage_options(scheme_of(source), job.storage) if "://" in source else None
        start = time.perf_counter()
        self.bundle = load_bundle(
            source,
            device=compute.device,
            dtype=compute.dtype,
            revision=job.model.revision,
            cache_dir=job.model.cache_dir,
            storage_options=options,
        )
        b = self.bundle
        self.batching = batching(compute, Geometry(b.family, b.native_size, b.pixel_multiple))
        self.bundle.optimize(
            channels_last=compute.channels_last,
            compile_unet=compute.compile_unet,
            vae_tiling=compute.vae_tiling,
            max_batch=self.batching.max_batch,
        )
        if compute.vae_slicing:
            self.bundle.vae.enable_slicing()
        sel = job.selection
        self.editor = DiffEditor(
            self.bundle,
            job.params,
            max_batch=self.batching.max_batch,
            vae_batch=self.batching.vae_batch,
            scoring=scoring_of(job),
            selection=Selection(candidates=sel.candidates, by=sel.by, variants=sel.variants),
        )
        self.model = model_label or redact(self.bundle.source)
        self.provenance = {
            "model_family": self.bundle.family,
            "diffusers_version": diffusers.__version__,
            "torch_version": torch.__version__,
        }
        log.info(
            "model %s loaded in %.1f s (torch threads: %d); %s",
            self.model,
            time.perf_counter() - start,
            threads,
            self.batching.describe(),
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        from diffedit.tokens import bundle_tokenizers

        return edit_rows(
            batch,
            self.editor,
            self.model,
            self.bundle.weights_hash,
            tokenizers=bundle_tokenizers(self.bundle),
            provenance=self.provenance,
            chunk_size=self.batching.batch_size if self.batching.group_window else None,
        )


def edit_rows(
    batch: pa.Table,
    editor: Any,
    model: str,
    weights_hash: str,
    tokenizers: Sequence[Any] = (),
    provenance: dict[str, str] | None = None,
    chunk_size: int | None = None,
) -> pa.Table:
    """Edit the ``ok`` rows of a working batch with ``editor``; ``failed`` rows pass through.

    ``chunk_size`` (a window of ``compute.group_window`` rows, ``pipeline.grouping``): the rows are
    edited in chunks of at most that many rows of one model resolution, one editor call each; None:
    the batch in one call. Rows come back in the batch's order either way.

    A request the editor refuses fails its row. If the batch raises anyway, each row is retried alone
    so that one bad row cannot fail its batch-mates (a row's result does not depend on its batch).
    With ``tokenizers`` (the model's), a row whose query and caption are the same tokens after
    truncation, or whose prompt was truncated, gets a ``warning`` (``diffedit.tokens``); it is still
    edited and stays ``ok``. ``provenance``: columns every row carries (the model's family, versions).
    """
    from diffedit.editor import EditRequest
    from diffedit.tokens import check_prompts

    records = batch.to_pylist()
    todo: list[tuple[dict[str, Any], Any]] = []
    for row in records:
        row.update(model=model, model_weights_sha256=weights_hash or None, **(provenance or {}))
        if row["status"] != R.OK:
            continue
        try:
            request = EditRequest(
                image=Image.frombytes("RGB", (row["width"], row["height"]), row["pixels"]),
                query=row["query"],
                caption=row["caption"] or "",
                seed=int(row["seed"]),
                params=EditParams.from_dict(
                    {k: row[k] for k in EditParams.field_names()}, source=f"row {row['id']}"
                ),
                id=row["id"],
            )
            editor.validate(request)
        except (TypeError, ValueError) as exc:
            row.update(status=R.FAILED, error=str(exc))
            continue
        warnings = check_prompts(tokenizers, request.query, request.caption).warnings()
        if warnings:
            row["warning"] = "; ".join([*([row["warning"]] if row.get("warning") else []), *warnings])
        todo.append((row, request))
    groups = [todo]
    if chunk_size and todo:
        keys = [
            (r["model_width"], r["model_height"])
            if r.get("model_width")
            else ("input", r["width"], r["height"])
            for r, _ in todo
        ]
        groups = [[todo[i] for i in chunk] for chunk in chunks(keys, chunk_size)]
    for group in groups:
        for row, result in _edit_group(editor, group):
            c = result.counters
            row.update(
                edited_pixels=result.image.convert("RGB").tobytes(),
                mask_pixels=result.mask_binary.convert("L").tobytes(),
                mask_area=float(result.mask_area),
                **{f"score_{name}": result.scores.get(name) for name in SCORE_NAMES},
                candidate=result.candidate,
                candidate_seed=result.candidate_seed,
                candidates=[
                    {
                        "candidate": cand["candidate"],
                        "seed": cand["seed"],
                        **{f"score_{name}": cand["scores"].get(name) for name in SCORE_NAMES},
                    }
                    for cand in result.candidates
                ],
                unet_evals=int(c.get("unet_evals", 0)),
                seconds_mask=c.get("seconds_mask"),
                seconds_encode=c.get("seconds_encode"),
                seconds_decode=c.get("seconds_decode"),
                seconds_score=c.get("seconds_score"),
                seconds_vae=c.get("seconds_vae"),
                seconds_edit=c.get("seconds_total"),
            )
    return R.table_from_rows(records, R.EDITED_SCHEMA)


def _edit_group(editor: Any, todo: list[tuple[dict[str, Any], Any]]) -> list[tuple[dict[str, Any], Any]]:
    """(row, result) for the rows of one editor call; if the call raises, each row is retried alone and
    a row that still fails is marked failed (and left out)."""
    if not todo:
        return []
    try:
        results = editor.edit([req for _, req in todo])
        return list(zip([row for row, _ in todo], results, strict=True))
    except Exception as exc:
        log.warning(
            "batch of %d rows failed (%s: %s); retrying row by row", len(todo), type(exc).__name__, exc
        )
    pairs = []
    for row, request in todo:
        try:
            pairs.append((row, editor.edit([request])[0]))
        except Exception as row_exc:
            row.update(status=R.FAILED, error=f"edit failed: {type(row_exc).__name__}: {row_exc}")
    return pairs


# --------------------------------------------------------------------------- 3. encode


def encode_rows(
    batch: pa.Table,
    *,
    run_id: str,
    version: str,
    keep_rule: FilterConfig | None = None,
    output: OutputConfig | None = None,
) -> pa.Table:
    """Working rows -> output rows (``rows.OUTPUT_SCHEMA``): the images in Hugging Face's Image layout
    (a struct of ``bytes`` and ``path``), encoded as ``output`` says (``input_record``; the edit as
    ``output.image_format``; the mask as PNG), and ``keep`` / ``reject_reason`` by ``keep_rule`` (the
    job's ``filter``; None: every ok row is kept). Default ``output``: every image as PNG."""
    output = output or OutputConfig(path="", input_image="png")
    out = []
    for row in batch.to_pylist():
        start = time.perf_counter()
        size = (row["width"], row["height"]) if row["width"] else None
        record = {k: row.get(k) for k in R.OUTPUT_SCHEMA.names}
        record.update(run_id=run_id, diffedit_version=version)
        record["keep"], record["reject_reason"] = keep_verdict(row, keep_rule or FilterConfig())
        if row["status"] == R.OK:
            record["input_image"] = input_record(row, output.input_image)
            edited = Image.frombytes("RGB", size, row["edited_pixels"])
            record["edited_image"] = {
                "bytes": encode_image(edited, output.image_format, output.image_quality),
                "path": None,
            }
            record["mask"] = {
                "bytes": encode_png(Image.frombytes("L", size, row["mask_pixels"])),
                "path": None,
            }
        else:
            record.update(input_image=None, edited_image=None, mask=None, mask_area=None)
        record["seconds_png"] = time.perf_counter() - start
        out.append(record)
    return R.table_from_rows(out, R.OUTPUT_SCHEMA)


def input_record(row: dict[str, Any], mode: str) -> dict[str, Any]:
    """The ``input_image`` struct of an ok row, per ``output.input_image``: ``reference`` -> the URI alone
    (``bytes`` null; a reader loads it from ``path``); ``original`` -> the file's bytes, when the fetch
    kept them (they show the edited pixels); otherwise, and for ``png``, the decoded upright RGB as PNG.
    ``path`` is the row's URI (credentials removed), or null for inline ``image_bytes``."""
    if mode == "reference" and row["input_path"]:
        return {"bytes": None, "path": row["input_path"]}
    if mode in ("original", "reference") and row.get("input_bytes"):
        return {"bytes": row["input_bytes"], "path": row["input_path"]}
    pixels = Image.frombytes("RGB", (row["width"], row["height"]), row["pixels"])
    return {"bytes": encode_png(pixels), "path": row["input_path"]}

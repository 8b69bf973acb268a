"""The preflight: every check that needs neither the model's weights in memory nor Ray.

``preflight(job)`` is what ``diffedit-batch validate`` prints and what ``run`` does first, before it
starts Ray or writes anything to the output, so the two always agree:

1. paths: relative local paths resolved against the working directory (``config.resolve_paths``);
2. input: every manifest file's schema, the row count, ids (non-null, non-empty, unique);
3. images: the rows' image URIs against ``images.allow`` (a warning: such rows fail);
4. model: found by its form (local directory, URI, ``hf://`` repository), its layout checked from its
   file listing and small JSON files, its fingerprint taken (``pipeline.identity``);
5. texts: rows whose query and caption are the same tokens after truncation, or cut (warnings, from
   the tokenizer files alone);
6. output: the committed ids, the owner's results hash against this job's (``pipeline.identity``,
   the one definition), ids the input does not have, and whether ``_SUCCESS`` says it is complete.

A configuration problem is a ``ConfigError`` (exit 2), an unusable input or an output that belongs to
another configuration an ``InputError`` (exit 3), storage that cannot be reached a ``StorageError``
(exit 1: retryable).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import fsspec

from pipeline import output as O
from pipeline.config import ConfigError, JobConfig, resolve_paths, scoring_of
from pipeline.faults import credentials_message, describe, is_transient, rejected_credentials
from pipeline.identity import ModelSource, identity_difference, inspect_model, results_hash, results_identity
from pipeline.images import is_allowed, shown_uri
from pipeline.manifest import IMAGE, IMAGE_BYTES, ManifestError, ManifestInfo, inspect_manifest
from pipeline.sizing import batching
from pipeline.storage import StorageError, filesystem, is_local_fs, join, parquet_file, redact


class InputError(ValueError):
    """The input or the existing output prevents the run (exit code 3)."""


class UnreadableOutput(InputError):
    """A committed part cannot be read (``output.UnreadableParts``): exit 3 naming the files; ``run
    --repair`` sets them aside and edits their rows again."""


@dataclass(frozen=True)
class Preflight:
    """What the preflight found; ``job`` has its paths resolved."""

    job: JobConfig
    manifest: ManifestInfo
    model: ModelSource
    identity: dict[str, Any]
    results_hash: str
    committed: tuple[str, ...]  # ids in the output now
    failed_ids: frozenset[str]  # those of them whose status is failed
    prior: dict[str, Any] | None  # the output's job.json
    complete: bool  # every input id committed, _SUCCESS present, same results hash: a run is a no-op
    lines: list[str] = field(default_factory=list)

    @property
    def input_ids(self) -> list[str]:
        assert self.manifest.ids is not None
        return self.manifest.ids.to_pylist()


def output_location(job: JobConfig) -> tuple[fsspec.AbstractFileSystem, str]:
    """The output's filesystem and path (``job``'s paths resolved), refused (``ConfigError``, exit 2) where
    the run's state folder cannot sit beside it (``pipeline.output.check_location``)."""
    out_fs, out = filesystem(resolve_paths(job).output.path, job.storage)
    try:
        O.check_location(out, is_local_fs(out_fs))
    except O.OutputLocationError as exc:
        raise ConfigError(f"{job.source}: output.path: {exc}") from None
    return out_fs, out


def preflight(
    job: JobConfig,
    *,
    overwrite: bool = False,
    retry_failed: bool = False,
    cwd: str | None = None,
    texts_when_complete: bool = True,
) -> Preflight:
    """Run every check (module docstring) and return what was found, with a report of one line each.
    ``texts_when_complete=False`` (``run``) skips tokenizing every row when the output is already
    complete: the nightly no-op stays cheap."""
    written = job
    job = resolve_paths(job, cwd)
    lines = [f"config {job.source}: OK (name {job.name}, config hash {job.config_hash[:16]})"]
    manifest = _inspect_input(job)
    assert manifest.ids is not None
    lines.append(
        f"input: {manifest.num_rows} rows in {len(manifest.files)} file(s), ids unique; "
        f"columns {list(manifest.columns)}"
    )
    if manifest.ignored_columns:
        lines.append(f"input: ignored columns {list(manifest.ignored_columns)}")
    lines.extend(_check_image_uris(job, manifest))
    lines.extend(duplicate_edits(job, manifest))
    model = inspect_model(job)
    lines.append(f"model: {model.description}")
    lines.append(row_cost_line(job))
    lines.append(batching(job.compute, model.geometry).describe())
    identity = results_identity(job, model)
    key = results_hash(identity)
    lines.append(f"results hash {key[:16]} (model, params, image rules, device/dtype; never paths)")

    shown = redact(written.output.path)
    out_fs, out = output_location(job)
    try:
        parts = O.read_parts(out_fs, out, columns=["id", "status"])
        state_dir = O.state_dir_to_read(out_fs, out)
        done = O.exists(out_fs, join(state_dir, O.SUCCESS_FILE))
        prior = O.read_json(out_fs, join(state_dir, O.JOB_FILE))
    except O.UnreadableParts as exc:
        raise UnreadableOutput(str(exc)) from None
    except (OSError, ValueError) as exc:
        rejected = rejected_credentials(exc)
        if rejected is not None:
            raise ConfigError(credentials_message(f"output {shown}", rejected)) from None
        if isinstance(exc, PermissionError) and not is_transient(exc):  # S3 answers a HEAD with a bare 403
            raise ConfigError(
                f"output {shown}: access denied ({describe(exc)}): the credentials of this environment "
                "may not read it"
            ) from None
        raise StorageError(f"output {shown}: cannot read: {type(exc).__name__}: {exc}") from None
    committed = parts.column("id").to_pylist()
    failed_ids = frozenset(
        i for i, st in zip(committed, parts.column("status").to_pylist(), strict=True) if st != "ok"
    )
    input_set = set(manifest.ids.to_pylist())
    state = f"output {shown}: "
    complete = False
    if overwrite:
        state += f"holds {len(committed)} rows: --overwrite removes them first"
    elif not committed:
        state += "empty (a run starts afresh)"
    else:
        if prior and prior.get("results_hash") != key:
            raise InputError(
                f"output {shown} holds {len(committed)} rows made with another configuration (results hash "
                f"{str(prior.get('results_hash'))[:12]}, this job {key[:12]}; differs in: "
                f"{identity_difference(prior.get('results_identity'), identity)}): use --overwrite, or "
                "another output path"
            )
        extra = set(committed) - input_set
        if extra:
            raise InputError(
                f"output {shown} holds {len(extra)} id(s) that the input does not (e.g. {sorted(extra)[:3]}): "
                "use --overwrite, or another output path"
            )
        complete = done and input_set <= set(committed) and not (retry_failed and failed_ids)
        if complete:
            state += f"complete ({len(committed)} rows, _SUCCESS present: a run is a no-op)"
        elif retry_failed and failed_ids:
            state += (
                f"{len(committed)} rows committed, {len(failed_ids)} failed: --retry-failed edits them again"
            )
        else:
            state += f"{len(committed)} of {manifest.num_rows} rows committed (a run resumes)"
    if not complete or texts_when_complete:
        lines.extend(check_texts(job, manifest.files, model))
    lines.append(state)
    return Preflight(
        job=job,
        manifest=manifest,
        model=model,
        identity=identity,
        results_hash=key,
        committed=tuple(committed),
        failed_ids=failed_ids,
        prior=prior,
        complete=complete,
        lines=lines,
    )


def row_cost_line(job: JobConfig) -> str:
    """What one row costs in UNet evaluations at the job's parameters, scores and candidates."""
    from diffedit.select import unet_evals_per_row

    sc, k = scoring_of(job), job.selection.candidates
    cost = unet_evals_per_row(job.params, sc, k, job.selection.variants)
    plain = unet_evals_per_row(job.params, None, 1)["total"]
    selection = f"best of {k} candidates by {dict(job.selection.by)}" if k > 1 else "one candidate"
    return (
        f"cost: {cost['total']} UNet evaluations per row ({selection}: mask {cost['mask']}, encode "
        f"{cost['encode']}, decode {cost['decode']}, scores {cost['score']}; a plain edit: {plain})"
    )


def _inspect_input(job: JobConfig) -> ManifestInfo:
    try:
        return inspect_manifest(job.input.paths, job.storage)
    except ManifestError as exc:
        if getattr(exc, "retryable", False):
            raise StorageError(str(exc)) from None
        raise InputError(str(exc)) from None


def _check_image_uris(job: JobConfig, manifest: ManifestInfo) -> list[str]:
    """A warning line when rows' image URIs fall outside ``images.allow`` (those rows will fail)."""
    if IMAGE not in manifest.columns:
        return []
    fs, _ = filesystem(job.input.paths[0], job.storage)
    outside = total = 0
    examples: list[str] = []
    for path in manifest.files:
        pf = parquet_file(fs, path)
        if IMAGE not in pf.schema_arrow.names:
            continue
        for uri in pf.read(columns=[IMAGE]).column(IMAGE).to_pylist():
            if uri:
                total += 1
                if not is_allowed(uri, job.images.allow):
                    outside += 1
                    if len(examples) < 3:
                        examples.append(shown_uri(uri))
    if not total:
        return []
    if outside:
        return [
            f"images: WARNING {outside} of {total} image URIs are outside images.allow "
            f"(these rows will fail), e.g. {examples}"
        ]
    return [f"images: all {total} image URIs are inside images.allow"]


def duplicate_edits(job: JobConfig, manifest: ManifestInfo) -> list[str]:
    """A line when manifest rows ask for the same edit of the same image: the same (image, query), the
    image identified by its URI or the sha256 of its inline bytes. (The same picture under two URIs or
    encodings is found after the run: the output's ``input_sha256`` hashes the decoded pixels.)"""
    import hashlib

    fs, _ = filesystem(job.input.paths[0], job.storage)
    groups: dict[tuple[str, str], list[str]] = {}
    for path in manifest.files:
        names = parquet_file(fs, path).schema_arrow.names
        columns = ["id", "query", *[c for c in (IMAGE, IMAGE_BYTES) if c in names]]
        for row in parquet_file(fs, path).read(columns=columns).to_pylist():
            blob, uri = row.get(IMAGE_BYTES), row.get(IMAGE)
            image = f"sha256:{hashlib.sha256(blob).hexdigest()}" if blob else (f"uri:{uri}" if uri else "")
            if image and row["query"]:
                groups.setdefault((image, row["query"]), []).append(row["id"])
    repeated = [sorted(ids) for ids in groups.values() if len(ids) > 1]
    if not repeated:
        return [f"input: no two rows ask for the same edit of the same image ({len(groups)} distinct)"]
    extra = sum(len(ids) - 1 for ids in repeated)
    examples = "; ".join(", ".join(ids[:3]) for ids in sorted(repeated)[:3])
    return [
        f"input: WARNING {extra} row(s) repeat another row's (image, query): {len(repeated)} group(s), "
        f"e.g. {examples} (each is edited and written; dedupe the manifest to save the work)"
    ]


def validate_job(job: JobConfig, address: str | None = None) -> list[str]:
    """``preflight``'s report, with the resource plan checked as ``run`` checks it
    (``pipeline.cluster.check_resources``: this machine without an address, else the live cluster)."""
    from pipeline.cluster import check_resources

    found = preflight(job)
    plan = check_resources(found.job, address, log_warnings=False)
    compute = [f"compute: {note}" for note in plan.notes]
    compute += [f"compute: WARNING {warning}" for warning in plan.warnings]
    return [*found.lines[:-1], *compute, found.lines[-1]]


def model_tokenizers(job: JobConfig, model: ModelSource) -> list[Any]:
    """The model's tokenizers, from their files alone (a remote model's tokenizer folders are copied to
    a temporary folder first); empty for a hub repository (its files need the network)."""
    import tempfile

    from diffedit.tokens import TOKENIZER_FOLDERS, load_tokenizers

    if model.kind == "remote":
        fs, root = filesystem(model.location, job.storage)
        root = root.rstrip("/")
        with tempfile.TemporaryDirectory() as tmp:
            for name in TOKENIZER_FOLDERS:
                if fs.exists(f"{root}/{name}"):
                    fs.get(f"{root}/{name}/", f"{tmp}/{name}/", recursive=True)
            if fs.exists(f"{root}/model_index.json"):  # it names each tokenizer's class (CLIP or T5)
                fs.get(f"{root}/model_index.json", f"{tmp}/model_index.json")
            return load_tokenizers(tmp)
    if model.kind == "local":
        return load_tokenizers(model.location)
    return []


def check_texts(
    job: JobConfig, files: tuple[str, ...] | list[str], model: ModelSource | None = None
) -> list[str]:
    """Warnings about rows whose edit cannot reach the model: query and caption the same tokens after
    the text encoder's truncation (a no-op edit), or a prompt cut at the token limit (tokenizer files
    only, ``diffedit.tokens``). ``model``: the preflight's (default: found here)."""
    from diffedit.tokens import check_prompts

    if model is None:
        job = resolve_paths(job)
        model = inspect_model(job)
    tokenizers = model_tokenizers(job, model)
    if not tokenizers:
        return []
    fs, _ = filesystem(job.input.paths[0], job.storage)
    unchanged: list[str] = []
    truncated: list[str] = []
    rows = 0
    for path in files:
        pf = parquet_file(fs, path)  # a pyarrow filesystem, never a Python file object (Arrow bug)
        names = pf.schema_arrow.names
        if "query" not in names:
            continue
        columns = ["id", "query"] + (["caption"] if "caption" in names else [])
        for row in pf.read(columns=columns).to_pylist():
            if not row.get("query"):
                continue
            rows += 1
            check = check_prompts(tokenizers, str(row["query"]), str(row.get("caption") or ""))
            if check.unchanged:
                unchanged.append(str(row["id"]))
            if check.truncated:
                truncated.append(str(row["id"]))
    limit = min(t.model_max_length for t in tokenizers)
    lines = []
    if unchanged:
        lines.append(
            f"text: WARNING {len(unchanged)} of {rows} rows have query and caption equal after truncation to "
            f"{limit} tokens (the edit would do nothing), e.g. {unchanged[:3]}"
        )
    if truncated:
        lines.append(
            f"text: WARNING {len(truncated)} of {rows} rows have a caption or query longer than {limit} "
            f"tokens (cut), e.g. {truncated[:3]}"
        )
    if not lines:
        lines.append(f"text: all {rows} queries differ from their captions within {limit} tokens")
    return lines


__all__ = [
    "InputError",
    "ManifestError",
    "Preflight",
    "StorageError",
    "UnreadableOutput",
    "check_texts",
    "preflight",
    "validate_job",
]

"""``diffedit-batch validate``: everything that can be checked without loading the model or Ray.

The config is already strict (``pipeline.config``); this adds the input (schema, row count, ids), the
model's directory layout (local or remote, from its file listing and small JSON files only), the
rows' image URIs against the allow-list, and the state of the output.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pyarrow.parquet as pq

from pipeline import output as O
from pipeline.config import ConfigError, JobConfig
from pipeline.images import is_allowed
from pipeline.manifest import IMAGE, ManifestError, inspect_manifest
from pipeline.storage import filesystem, redact


def check_model(job: JobConfig) -> str:
    """Check ``model.source`` without loading weights; a description of what was found."""
    from diffedit.loading import ModelLayoutError, UnsafeWeightsError, check_layout

    source = job.model.source
    where = f"{job.source}: model.source {redact(source)}"
    local_path = source[len("file://") :] if source.startswith("file://") else source
    if "://" in source and not source.startswith("file://"):
        try:
            fs, root = filesystem(source, job.storage)
            root = root.rstrip("/")
            listing = fs.find(root)
        except Exception as exc:
            raise ConfigError(f"{where}: cannot list: {type(exc).__name__}: {exc}") from None
        files = {p[len(root) + 1 :] for p in listing if p.startswith(root + "/")}
        if not files:
            raise ConfigError(f"{where}: no such model directory (nothing under it)")

        def read_json(rel: str) -> Any:
            with fs.open(f"{root}/{rel}", "rb") as f:
                return json.load(f)

        kind = "remote directory"
    elif os.path.exists(os.path.expanduser(local_path)):
        root = os.path.abspath(os.path.expanduser(local_path))
        if not os.path.isdir(root):
            raise ConfigError(f"{where}: is a file, not a model directory")
        files = set()
        for directory, subdirs, names in os.walk(root):
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]
            rel = os.path.relpath(directory, root)
            files.update(
                os.path.normpath(os.path.join(rel, n)).replace(os.sep, "/")
                for n in names
                if not n.startswith(".")
            )

        def read_json(rel: str) -> Any:
            with open(os.path.join(root, rel)) as f:
                return json.load(f)

        kind = "local directory"
    elif source.count("/") == 1 and not source.startswith((".", "/", "~")):
        return (
            f"hub id {source}"
            + (f" @ {job.model.revision}" if job.model.revision else "")
            + " (not checked: needs the hub)"
        )
    else:
        raise ConfigError(f"{where}: no such directory (nor a URI or a hub id org/name)")
    try:
        weights = check_layout(files, read_json, where)
    except (ModelLayoutError, UnsafeWeightsError) as exc:
        raise ConfigError(str(exc)) from None
    count = sum(len(v) for v in weights.values())
    return f"{kind} {redact(source)}: Stable Diffusion layout OK ({count} safetensors file(s))"


def validate_job(job: JobConfig, address: str | None = None) -> list[str]:
    """Run every check; a report (one line each). Raises ``ConfigError`` (model, or a resource plan
    that can never run: the same check as ``run``'s, ``pipeline.job.check_resources``) or
    ``ManifestError`` (input)."""
    lines = [f"config {job.source}: OK (name {job.name}, config hash {job.config_hash[:16]})"]
    info = inspect_manifest(job.input.paths, job.storage)
    assert info.ids is not None
    lines.append(
        f"input: {info.num_rows} rows in {len(info.files)} file(s), ids unique; columns {list(info.columns)}"
    )
    if info.ignored_columns:
        lines.append(f"input: ignored columns {list(info.ignored_columns)}")
    fs, _ = filesystem(job.input.paths[0], job.storage)
    outside = total_uris = 0
    examples: list[str] = []
    if IMAGE in info.columns:
        for path in info.files:
            with fs.open(path, "rb") as f:
                schema = pq.read_schema(f)
            if IMAGE not in schema.names:
                continue
            with fs.open(path, "rb") as f:
                uris = pq.read_table(f, columns=[IMAGE]).column(IMAGE).to_pylist()
            for uri in uris:
                if uri:
                    total_uris += 1
                    if not is_allowed(uri, job.images.allow):
                        outside += 1
                        if len(examples) < 3:
                            examples.append(redact(uri))
    if total_uris:
        if outside:
            lines.append(
                f"images: WARNING {outside} of {total_uris} image URIs are outside images.allow "
                f"(these rows will fail), e.g. {examples}"
            )
        else:
            lines.append(f"images: all {total_uris} image URIs are inside images.allow")
    lines.append(f"model: {check_model(job)}")
    lines += check_texts(job, info.files)
    from pipeline.job import check_resources

    plan = check_resources(job, address, log_warnings=False)
    lines += [f"compute: {note}" for note in plan.notes]
    lines += [f"compute: WARNING {warning}" for warning in plan.warnings]
    out_fs, out = filesystem(job.output.path, job.storage)
    committed = O.read_parts(out_fs, out, columns=["id"]).column("id").to_pylist()
    done = O.exists(out_fs, f"{out.rstrip('/')}/{O.SUCCESS_FILE}")
    prior = O.read_json(out_fs, f"{out.rstrip('/')}/{O.JOB_FILE}")
    state = f"output {redact(job.output.path)}: "
    if not committed:
        state += "empty (a run starts afresh)"
    elif prior and prior.get("results_hash") != job.results_hash:
        state += f"WARNING holds {len(committed)} rows of another configuration (run needs --overwrite)"
    elif done and len(set(committed)) == len(set(info.ids.to_pylist())):
        state += f"complete ({len(committed)} rows, _SUCCESS present: a run is a no-op)"
    else:
        state += f"{len(committed)} of {info.num_rows} rows committed (a run resumes)"
    lines.append(state)
    return lines


def model_tokenizers(job: JobConfig) -> list[Any]:
    """The model's tokenizers, from their files alone (a remote model's tokenizer folders are copied to
    a temporary folder first); empty for a hub id, which needs the network."""
    import tempfile

    from diffedit.tokens import TOKENIZER_FOLDERS, load_tokenizers

    source = job.model.source
    if "://" in source and not source.startswith("file://"):
        fs, root = filesystem(source, job.storage)
        root = root.rstrip("/")
        with tempfile.TemporaryDirectory() as tmp:
            for name in TOKENIZER_FOLDERS:
                if fs.exists(f"{root}/{name}"):
                    fs.get(f"{root}/{name}/", f"{tmp}/{name}/", recursive=True)
            return load_tokenizers(tmp)
    local = os.path.expanduser(source[len("file://") :] if source.startswith("file://") else source)
    return load_tokenizers(local) if os.path.isdir(local) else []


def check_texts(job: JobConfig, files: tuple[str, ...] | list[str]) -> list[str]:
    """Warnings about rows whose edit cannot reach the model: query and caption the same tokens after
    the text encoder's truncation (a no-op edit), or a prompt cut at the token limit (tokenizer files
    only, ``diffedit.tokens``)."""
    from diffedit.tokens import check_prompts

    tokenizers = model_tokenizers(job)
    if not tokenizers:
        return []
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, _ = filesystem(job.input.paths[0], job.storage)
    arrow_fs = PyFileSystem(FSSpecHandler(fs))  # never a Python file object to pyarrow (Arrow bug)
    unchanged: list[str] = []
    truncated: list[str] = []
    rows = 0
    for path in files:
        names = pq.read_schema(path, filesystem=arrow_fs).names
        if "query" not in names:
            continue
        columns = ["id", "query"] + (["caption"] if "caption" in names else [])
        for row in pq.read_table(path, columns=columns, filesystem=arrow_fs).to_pylist():
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


__all__ = ["ManifestError", "check_model", "check_texts", "validate_job"]

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


__all__ = ["ManifestError", "check_model", "validate_job"]

"""``diffedit-batch``: run, validate and preview DiffEdit batch jobs; prepare their manifests.

Exit codes (``pipeline.job.ExitCode``): 0 success or nothing to do; 1 the run failed or storage/Ray
could not be reached (a rerun resumes); 2 configuration or usage error (also: a model that cannot be
found, a malformed Ray address, a missing Ray auth token); 3 unusable input (schema, null or duplicate
ids), an output that belongs to another configuration, or a committed part that cannot be read (``run
--repair`` sets it aside and edits its rows again); 5 another live run owns the output (``pipeline.lease``:
this run did nothing, or stopped committing when the other took over); 4 more rows failed than
``failure.max_failed_fraction`` allows; 143 (128 + SIGTERM) stopped by SIGTERM, e.g. Airflow's
``execution_timeout``: Ray shut down cleanly, the committed rows stay, a rerun resumes.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import typer
from typer.core import TyperOption

from pipeline import signals
from pipeline.config import ConfigError, JobConfig, StorageConfig, load_job
from pipeline.job import ExitCode, package_version
from pipeline.lease import OutputBusy
from pipeline.manifest import ManifestError
from pipeline.validate import InputError, StorageError

#: typer (0.29) shows a ``<bool>`` type beside every flag (``--overwrite <bool>``), which reads as if
#: the flag took a value; flags take none, so show no type for them (``--help`` included).
_display_type_rich = TyperOption.display_type_rich
TyperOption.display_type_rich = lambda self, ctx: (  # type: ignore[method-assign]
    None if self.is_flag else _display_type_rich(self, ctx)
)

app = typer.Typer(
    help="DiffEdit (Couairon et al., ICLR 2023) as a Ray Data batch job: manifests in, edited Parquet out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
prepare_app = typer.Typer(help="Build input manifests.", no_args_is_help=True)
app.add_typer(prepare_app, name="prepare")

log = logging.getLogger("pipeline")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"diffedit-batch {package_version()}")
        raise typer.Exit(0)


VERBOSE = typer.Option(False, "--verbose", "-v", help="Debug logging.")
QUIET = typer.Option(False, "--quiet", "-q", help="Warnings and errors only.")


@app.callback()
def main(
    verbose: bool = VERBOSE,
    quiet: bool = QUIET,
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """DiffEdit batch jobs on Ray Data."""
    _setup_logging(verbose, quiet)


def _setup_logging(verbose: bool, quiet: bool) -> None:
    """Log to stderr at INFO (DEBUG with -v, WARNING with -q). The app's callback always calls it; a
    command calls it again only for -q/-v written after the command name."""
    logger = logging.getLogger("pipeline")
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    for old in [h for h in logger.handlers if getattr(h, "_diffedit", False)]:
        logger.removeHandler(old)  # a previous invocation's stream (in-process runners) may be closed
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._diffedit = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False


def _command_logging(verbose: bool, quiet: bool) -> None:
    if verbose or quiet:
        _setup_logging(verbose, quiet)


def _fail(code: ExitCode, message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(int(code))


#: The original error's line inside Ray's text of a remote failure: ``pipeline.output.OwnershipLost: ...``
_ORIGINAL = re.compile(r"^(?:[a-z_][a-z0-9_]*\.)+([A-Z]\w*): (.+)$")


def _cause(exc: BaseException) -> str:
    """A one-line cause. Ray wraps the error of a remote task or actor in a long text (the remote
    traceback, then advice about ``ray.data.DataContext`` retries): the original's own line
    (``module.Class: message``) is shown when there is one, else the type and the first and last lines."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    originals = [m for m in map(_ORIGINAL.match, lines) if m]
    if len(lines) > 1 and originals:
        return f"{originals[-1].group(1)}: {originals[-1].group(2)}"
    first, last = lines[0], lines[-1]
    return (
        f"{type(exc).__name__}: {first}"
        if first == last
        else f"{type(exc).__name__}: {first[:160]} ... {last}"
    )


def _storage(endpoint_url: str | None, region: str | None, anonymous: bool) -> StorageConfig:
    return StorageConfig(endpoint_url=endpoint_url, region=region, anonymous=anonymous)


ENDPOINT = typer.Option(
    None, "--endpoint-url", help="S3-compatible endpoint (credentials from the environment)."
)
REGION = typer.Option(None, "--region", help="S3 region.")
ANONYMOUS = typer.Option(False, "--anonymous", help="Unsigned (public) S3/GCS access.")


@app.command()
def run(
    job_file: Path = typer.Argument(..., help="The job YAML (jobs/*.yaml)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Delete this job's output first and start afresh."
    ),
    address: str | None = typer.Option(
        None,
        "--address",
        help="Ray cluster address (default $RAY_ADDRESS, else a local Ray sized to this machine).",
    ),
    retry_failed: bool = typer.Option(
        False,
        "--retry-failed",
        help="Edit the committed failed rows again (after fixing their cause); their records are replaced.",
    ),
    repair: bool = typer.Option(
        False,
        "--repair",
        help="Move committed parts that cannot be read (truncated, corrupt) to unreadable/ in the output's "
        "state folder (.<name>.diffedit/ beside it) and edit their rows again.",
    ),
    verbose: bool = VERBOSE,
    quiet: bool = QUIET,
) -> None:
    """Run a job: edit every manifest row not yet in the output, then write the summary and _SUCCESS."""
    _command_logging(verbose, quiet)
    signals.install()
    try:
        from pipeline.job import run_job, summary_table

        if overwrite and retry_failed:
            raise ConfigError("--overwrite and --retry-failed exclude each other")
        job = _load(job_file)
        outcome = run_job(job, overwrite=overwrite, address=address, retry_failed=retry_failed, repair=repair)
    except signals.Terminated:
        _shutdown_ray()
        typer.echo(
            f"terminated: SIGTERM received; Ray shut down, committed rows kept, no _SUCCESS written; "
            f"a rerun resumes (exit {signals.EXIT_TERMINATED})",
            err=True,
        )
        raise typer.Exit(signals.EXIT_TERMINATED) from None
    except typer.Exit:
        raise
    except ConfigError as exc:
        raise _fail(ExitCode.CONFIG, f"config: {exc}") from None
    except (InputError, ManifestError) as exc:
        raise _fail(ExitCode.INPUT, f"input: {exc}") from None
    except StorageError as exc:
        raise _fail(ExitCode.ERROR, f"storage: {exc}; a rerun resumes") from None
    except OutputBusy as exc:
        raise _fail(ExitCode.BUSY, f"busy: {exc}") from None
    except Exception as exc:
        log.debug("run failed", exc_info=True)
        raise _fail(ExitCode.ERROR, f"run failed: {_cause(exc)}; a rerun resumes") from None
    finally:
        signals.uninstall()
    if outcome.status != "already_complete":
        typer.echo(summary_table(outcome.summary))
    typer.echo(outcome.message)
    raise typer.Exit(int(outcome.exit_code))


def _load(job_file: Path) -> JobConfig:
    return load_job(job_file)


def _shutdown_ray() -> None:
    """Stop this driver's Ray (a local cluster started here goes with it) if it was started."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@app.command()
def validate(
    job_file: Path = typer.Argument(..., help="The job YAML."),
    address: str | None = typer.Option(
        None,
        "--address",
        help="Check the resource plan against this Ray cluster (default $RAY_ADDRESS, else this machine).",
    ),
    verbose: bool = VERBOSE,
    quiet: bool = QUIET,
) -> None:
    """Run the preflight of `run` (config, input schema and ids, the model's layout and fingerprint,
    the resource plan, the output's state) without loading the model (Ray only with an address)."""
    _command_logging(verbose, quiet)
    from pipeline.validate import validate_job

    try:
        lines = validate_job(_load(job_file), address=address)
    except ConfigError as exc:
        raise _fail(ExitCode.CONFIG, f"config: {exc}") from None
    except (InputError, ManifestError) as exc:
        raise _fail(ExitCode.INPUT, f"input: {exc}") from None
    except StorageError as exc:
        raise _fail(ExitCode.ERROR, f"storage: {exc}") from None
    for line in lines:
        typer.echo(line)
    typer.echo("valid")


@app.command()
def preview(
    output: str = typer.Argument(..., help="A job's output folder or prefix."),
    out: str = typer.Option("preview.png", "--out", "-o", help="The PNG to write."),
    rows: int = typer.Option(8, "--rows", "-n", min=1, help="How many rows to show."),
    cell: int = typer.Option(160, "--cell", min=32, help="Cell size in pixels."),
    show: str = typer.Option(
        "all", "--show", help="Which rows: all, kept (by the job's filter) or rejected."
    ),
    endpoint_url: str | None = ENDPOINT,
    region: str | None = REGION,
    anonymous: bool = ANONYMOUS,
    verbose: bool = VERBOSE,
    quiet: bool = QUIET,
) -> None:
    """Render a contact sheet (input | mask | edit) of some output rows, with caption, query, scores,
    the filter's verdict and, for rows of the shapes world, the strict judge's verdict."""
    _command_logging(verbose, quiet)
    from pipeline.preview import render_preview

    try:
        shown = render_preview(
            output, out, _storage(endpoint_url, region, anonymous), rows=rows, cell=cell, show=show
        )
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(ExitCode.INPUT, str(exc)) from None
    judged = (
        f"; strict judge: {shown.success} of {shown.judged} succeeded, {shown.clean} clean"
        if shown.judged
        else ""
    )
    typer.echo(f"wrote {out} ({shown.rows} rows{judged})")


@prepare_app.command("shapes")
def prepare_shapes(
    out: str = typer.Option(..., "--out", "-o", help="Folder (manifest.parquet inside) or .parquet file."),
    rows: int = typer.Option(16, "--rows", "-n", min=1, help="Number of rows."),
    seed: int = typer.Option(0, "--seed", min=0, help="Task stream of the held-out scenes."),
    size: int = typer.Option(64, "--size", min=16, help="Image side in pixels."),
    verbose: bool = VERBOSE,
    quiet: bool = QUIET,
) -> None:
    """The synthetic shapes manifest of the demo job: held-out scenes, recolour queries, images inline."""
    _command_logging(verbose, quiet)
    from pipeline.prepare import SHAPES_SCHEMA, shapes_rows, write_manifest

    records = shapes_rows(rows, seed=seed, size=size)
    path = write_manifest(records, out, StorageConfig(), SHAPES_SCHEMA)
    typer.echo(f"wrote {len(records)} rows to {path}")


@prepare_app.command("model")
def prepare_model(
    out: str = typer.Option("models/shapes-v3", "--out", "-o", help="Where to put it (the presets' path)."),
    name: str = typer.Option("shapes-v3", "--name", help="The bundled model."),
    verbose: bool = VERBOSE,
    quiet: bool = QUIET,
) -> None:
    """Copy the model bundled with the package (shapes-v3) to OUT, where the demo's preset finds it:
    the demo from a wheel install, without a checkout."""
    _command_logging(verbose, quiet)
    from pipeline.prepare import copy_bundled_model

    try:
        copied = copy_bundled_model(name, out)
    except ValueError as exc:
        raise _fail(ExitCode.CONFIG, str(exc)) from None
    typer.echo(
        f"{out}: the bundled {name} is already there"
        if not copied
        else f"copied {name} to {out} ({copied} files)"
    )


@prepare_app.command("coco-recolor")
def prepare_coco(
    captions: str = typer.Option(
        ..., "--captions", help="COCO captions JSON (captions_train2017.json), path or URI."
    ),
    images: str = typer.Option(
        ..., "--images", help="Prefix of the COCO images (s3://bucket/coco/train2017/)."
    ),
    out: str = typer.Option(
        ..., "--out", "-o", help="Folder/prefix (manifest.parquet inside) or .parquet file."
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Seeds the choice of target colours."),
    per_image: int = typer.Option(1, "--per-image", min=1, help="At most this many rows per image."),
    max_rows: int | None = typer.Option(None, "--max-rows", min=1, help="Stop after this many rows."),
    endpoint_url: str | None = ENDPOINT,
    region: str | None = REGION,
    anonymous: bool = ANONYMOUS,
    verbose: bool = VERBOSE,
    quiet: bool = QUIET,
) -> None:
    """The COCO recolour manifest: each caption's colour word swapped for another colour (deterministic);
    captions without a colour word are counted and left out."""
    _command_logging(verbose, quiet)
    from pipeline.prepare import COCO_SCHEMA, coco_recolor_rows, load_coco_captions, write_manifest

    storage = _storage(endpoint_url, region, anonymous)
    try:
        data = load_coco_captions(captions, storage)
        records, stats = coco_recolor_rows(data, images, seed=seed, per_image=per_image, max_rows=max_rows)
    except ValueError as exc:
        raise _fail(ExitCode.INPUT, str(exc)) from None
    if not records:
        raise _fail(ExitCode.INPUT, f"no caption of {captions} has a colour word: nothing to write")
    path = write_manifest(records, out, storage, COCO_SCHEMA)
    typer.echo(
        f"{stats.captions} captions of {stats.images} images: {stats.with_colour} with a colour word, "
        f"{stats.without_colour} without (left out); {stats.missing_image} with an image id missing from "
        f"images (left out); wrote {stats.rows} rows to {path}"
    )


if __name__ == "__main__":  # python -m pipeline.cli
    app()

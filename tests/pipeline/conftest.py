"""Fixtures of the batch-job tests: one local Ray cluster for the session (2 CPUs, like the machines
the demo must finish on) and a tiny model on disk. Helpers live in pipeline_testing.py."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pipeline_testing import make_checkout, png_bytes

from diffedit.tiny import save_tiny_model


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A local Ray for the whole session: 2 CPUs, no dashboard, 256 MiB object store. Yields its
    address (for drivers started in subprocesses)."""
    import ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=256 * 1024**2,
            log_to_driver=False,
            _node_ip_address="127.0.0.1",  # loopback only: drivers in subprocesses connect there
        )
    address = ray.get_runtime_context().gcs_address
    yield address
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SD-layout model directory (diffusers layout, safetensors)."""
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def make_image() -> Callable[..., bytes]:
    return png_bytes


@pytest.fixture(scope="session")
def finished(ray_cluster, tiny_model, tmp_path_factory) -> Path:
    """A checkout (``make_checkout``) whose demo job has run to completion on the session's Ray. Shared
    by the session: tests only read it, run no-ops on it or copy it."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    root = make_checkout(tmp_path_factory.mktemp("finished") / "checkout", tiny_model)
    previous = os.getcwd()
    os.chdir(root)
    try:
        result = CliRunner().invoke(app, ["run", "jobs/shapes_recolor.yaml", "--address", ray_cluster])
    finally:
        os.chdir(previous)
    assert result.exit_code == 0, result.output
    return root

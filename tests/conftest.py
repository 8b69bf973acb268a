"""Shared fixtures: a real S3-compatible server on loopback (moto's server mode, over HTTP, the way
s3fs's own test suite runs) and small helpers. Never patch s3fs: talk to the server."""

from __future__ import annotations

import os
import socket
import urllib.request
from collections.abc import Callable, Iterator

import pytest

# Dummy credentials for the loopback server; set before anything creates a client (and before
# ray.init, so Ray workers inherit them).
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")  # avoids a 5 s metadata stall
# No test reaches the Hugging Face Hub: set before anything imports huggingface_hub (it reads the
# variable at import) and before ray.init (Ray workers inherit it). A test of the "ask the hub" path
# points the client at a dead loopback port instead.
os.environ["HF_HUB_OFFLINE"] = "1"


def in_ci() -> bool:
    """Whether the suite runs in CI (``CI=true``, as GitHub Actions, GitLab CI and .ci/run set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _require(condition: bool, why: str) -> None:
    if condition:
        return
    if in_ci():
        pytest.fail(f"prerequisite missing in CI (CI=true): {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="session")
def require() -> Callable[[bool, str], None]:
    """``require(condition, why)``: a prerequisite of the calling test or fixture. When ``condition`` is
    false the test is skipped locally but FAILS in CI (``CI=true``), where a missing prerequisite
    (``unshare -n``, ``ray[default]``, enough memory) would otherwise turn a slow module green by
    skipping every test in it."""
    return _require


@pytest.fixture(autouse=True, scope="module")
def _torch_threads_left_as_found(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test module leaves torch's thread count as it found it: a test or fixture that sets one
    thread and never restores it makes every later test in the process run on one thread (two did).
    A module that leaks fails at its teardown, and the count is put back for the next module."""
    import torch

    before = torch.get_num_threads()
    yield
    after = torch.get_num_threads()
    if after != before:
        torch.set_num_threads(before)
        pytest.fail(
            f"{request.module.__name__} left torch's thread count at {after} (it was {before}): restore it "
            "(the torch_threads fixture does)",
            pytrace=False,
        )


@pytest.fixture
def torch_threads() -> Iterator[Callable[[int], None]]:
    """``torch_threads(n)`` sets torch's intra-op thread count for the test; the count it had before is
    restored afterwards (a test that leaves one thread set slows every later test in the process)."""
    import torch

    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The endpoint URL of a moto S3 server on 127.0.0.1, for the whole test session."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint: str) -> Iterator[dict]:
    """A clean S3 state with bucket ``test-bucket``; yields storage options for s3fs.

    The server is reset between tests (``POST /moto-api/reset``), as s3fs's suite does.
    """
    import s3fs

    request = urllib.request.Request(f"{s3_endpoint}/moto-api/reset", method="POST")
    urllib.request.urlopen(request).close()
    options = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, key="testing", secret="testing")
    fs.mkdir("test-bucket")
    s3fs.S3FileSystem.clear_instance_cache()
    yield {"endpoint_url": s3_endpoint, "bucket": "test-bucket", "storage_options": options}
    s3fs.S3FileSystem.clear_instance_cache()

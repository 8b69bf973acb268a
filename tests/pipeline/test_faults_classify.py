"""Issue 10, item 1: one classification of storage errors, transient (retried, then the run fails) or
permanent (the row's own answer), used by the fetch stage and the commit side."""

from __future__ import annotations

import errno

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from pipeline.faults import TransientStorageError, describe, find_transient, is_transient


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


def wrapped(inner: BaseException, outer: BaseException) -> BaseException:
    """What s3fs raises: a plain OSError / PermissionError whose cause is botocore's error."""
    outer.__cause__ = inner
    return outer


@pytest.mark.parametrize(
    "exc",
    [
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
        NoCredentialsError(),
        client_error("SlowDown", 503),
        client_error("InternalError", 500),
        client_error("Whatever", 502),
        client_error("TooManyRequestsException", 429),
        wrapped(client_error("SlowDown", 503), OSError(errno.EBUSY, "Please reduce your request rate")),
        ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
        ConnectionResetError(errno.ECONNRESET, "reset"),
        TimeoutError("timed out"),
        OSError(errno.EREMOTEIO, "remote I/O error"),
        TransientStorageError("x"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_transient(exc):
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        FileNotFoundError("s3://b/k"),
        wrapped(client_error("NoSuchKey", 404), FileNotFoundError("The specified key does not exist")),
        wrapped(client_error("AccessDenied", 403), PermissionError("Access Denied")),
        # rejected credentials stop the run with exit 2 (issue 20, item 6): not retried as transient
        wrapped(client_error("InvalidAccessKeyId", 403), PermissionError("The key does not exist")),
        client_error("NoSuchBucket", 404),
        ValueError("bad"),
        OSError(errno.EIO, "some error"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_permanent(exc):
    assert not is_transient(exc)


def test_a_missing_object_is_permanent_even_if_raised_while_handling_a_transient_error():
    try:
        try:
            raise EndpointConnectionError(endpoint_url="http://x")
        except EndpointConnectionError:
            raise FileNotFoundError("gone") from None
    except FileNotFoundError as exc:
        assert not is_transient(exc)


def test_describe_and_find_transient():
    exc = wrapped(client_error("SlowDown", 503), OSError(errno.EBUSY, "Please reduce your request rate"))
    assert describe(exc).startswith("ClientError: An error occurred (SlowDown)")
    ray_text = RuntimeError(
        "ray::MapBatches(fetch_rows)() (pid=1)\n  File x\npipeline.faults.TransientStorageError: cannot read image s3://b/k after retries\n"
        "Failed to apply UDF transform after 2/2 attempts"
    )
    found = find_transient(ray_text)
    assert (
        isinstance(found, TransientStorageError) and str(found) == "cannot read image s3://b/k after retries"
    )
    assert find_transient(ValueError("no")) is None

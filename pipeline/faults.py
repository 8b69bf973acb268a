"""Which storage errors are the row's own (permanent) and which are the infrastructure's (transient).

One rule, used by the fetch stage and by the commit side:

* **permanent**: a rerun would get the same answer, so the row fails with it: the object is absent
  (after the storage library's own retries), access to it is denied, it is too large, undecodable, over
  a limit, outside the allow-list, or its parameters are wrong;
* **transient**: the storage did not answer properly this time: connection refused or reset, connect
  or read timeouts, HTTP 5xx, throttling (``SlowDown``, 503, 429), expired or missing credentials;
* **rejected credentials** (``InvalidAccessKeyId``, ``SignatureDoesNotMatch``): neither; a retry gets
  the same answer and the row is not at fault, so the run stops with exit 2 (a configuration error).
  These are retried with backoff by botocore (``pipeline.storage``: ``storage.retry_mode``,
  ``storage.max_attempts``) and by s3fs; when they persist, the stage raises ``TransientStorageError``,
  the Ray task fails, the run exits 1 and the row is not committed, so the next run edits it.

An error is transient when it, or any exception in its ``__cause__`` / ``__context__`` chain, is one of
the kinds above (s3fs wraps a botocore ``ClientError`` into an ``OSError`` whose cause is the original).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Iterator
from typing import Any

#: botocore exception class names that mean "the endpoint did not answer properly" (matched by name
#: along the class hierarchy, so that botocore need not be importable where this runs).
TRANSIENT_BOTOCORE = frozenset(
    {
        "ConnectionError",  # botocore's: EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError, SSLError
        "HTTPClientError",  # ReadTimeoutError, ConnectionClosedError, ResponseStreamingError
        "IncompleteReadError",
        "ResponseParserError",  # throttling responses with invalid XML (s3fs issue 484)
        "NoCredentialsError",  # the run's environment, not the row
        "CredentialRetrievalError",
    }
)

#: aiohttp/fsspec/urllib3 (``https://`` images) exception class names that are transient.
TRANSIENT_HTTP = frozenset(
    {"ClientConnectionError", "ServerTimeoutError", "ClientPayloadError", "FSTimeoutError", "MaxRetryError",
     "NewConnectionError", "ProtocolError", "ReadTimeoutError", "ConnectTimeoutError", "IncompleteRead"}
)  # fmt: skip

#: HTTP statuses that are transient: request timeout, throttling, server errors.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def is_transient_status(status: int) -> bool:
    return status in TRANSIENT_STATUS or status >= 500


#: S3 error codes that are transient (throttling, server trouble, credentials of the run).
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestThrottled",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "ExpiredToken",
        "ExpiredTokenException",
        "TokenRefreshRequired",
    }
)

#: S3 error codes that say the storage rejected the run's credentials (a key it does not know, a wrong
#: secret, a malformed session token): a retry gets the same answer and the row is not at fault, so the
#: run stops as a configuration error (exit 2) with ``StorageCredentialsError``.
CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "InvalidClientTokenId",
     "UnrecognizedClientException"}
)  # fmt: skip

#: errno values of an ``OSError`` that are transient (s3fs maps 503 SlowDown to EBUSY, 500 to EREMOTEIO).
TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("EBUSY", "EREMOTEIO", "ECONNREFUSED", "ECONNRESET", "ECONNABORTED", "ETIMEDOUT", "EHOSTUNREACH",
                 "ENETUNREACH", "ENETDOWN", "EPIPE", "EAGAIN")
    if hasattr(errno, name)
)  # fmt: skip


class StorageCredentialsError(RuntimeError):
    """The storage rejected the credentials of the run's environment (``CREDENTIAL_CODES``): the job
    stops with exit 2 and commits nothing more; the rows are not at fault. One line, no secret."""


class TransientStorageError(RuntimeError):
    """Storage kept failing after every retry: the run fails (exit 1) and the row is not committed.

    The message is one line: what was being done, where, and the last error."""


def _class_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _one_is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TransientStorageError):
        return True
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return False
    names = _class_names(exc)
    module = type(exc).__module__ or ""
    if module.startswith("botocore") and names & TRANSIENT_BOTOCORE:
        return True
    if names & TRANSIENT_HTTP and module.startswith(("aiohttp", "fsspec", "urllib3")):
        return True
    if "ClientError" in names and module.startswith("botocore"):
        response = getattr(exc, "response", None) or {}
        code = str((response.get("Error") or {}).get("Code", ""))
        status = int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
        return code in TRANSIENT_CODES or is_transient_status(status) or code in ("500", "502", "503", "504")
    if "ClientResponseError" in names:  # aiohttp (https images): the status decides
        return is_transient_status(int(getattr(exc, "status", 0) or 0))
    if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout, asyncio.TimeoutError)):
        return True
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) is a transient storage error (module docstring).
    An absent object (``FileNotFoundError``, after the storage library's retries) is permanent whatever
    it was raised from; otherwise the chain is followed, since s3fs wraps botocore's errors in plain
    ``OSError``/``PermissionError``. Rejected credentials are not transient (``rejected_credentials``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, FileNotFoundError):
            return False
        if _one_is_transient(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def rejected_credentials(exc: BaseException) -> BaseException | None:
    """The botocore error in ``exc``'s chain whose code says the credentials were rejected
    (``CREDENTIAL_CODES``), or None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if "ClientError" in _class_names(current) and type(current).__module__.startswith("botocore"):
            response = getattr(current, "response", None) or {}
            if str((response.get("Error") or {}).get("Code", "")) in CREDENTIAL_CODES:
                return current
        current = current.__cause__ or current.__context__
    return None


def credentials_message(where: str, exc: BaseException) -> str:
    """The one-line message of rejected credentials at ``where`` (a redacted URI)."""
    return (
        f"{where}: the storage rejected the credentials of this environment ({describe(exc)}); "
        "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE (or the instance role)"
    )


def describe(exc: BaseException) -> str:
    """``Type: message`` of ``exc`` on one line (the innermost botocore error when s3fs wrapped one)."""
    inner = exc
    current: BaseException | None = exc
    while current is not None:
        if type(current).__module__.startswith(("botocore", "aiohttp")):
            inner = current
            break
        current = current.__cause__
    text = " ".join(str(inner).split())
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__


#: What Ray Data's ``retried_map_errors`` matches (the exception's type name is part of the text it
#: matches): only this module's transient errors are retried, never a bug or a row's own error.
RAY_RETRY_PATTERN = "TransientStorageError"


def find_transient(exc: BaseException) -> TransientStorageError | None:
    """The ``TransientStorageError`` behind ``exc``, which may be a Ray task error that wraps it (Ray
    keeps the original as ``cause``; over a process boundary only its text may survive)."""
    return find_raised(exc, TransientStorageError)


def find_rejected_credentials(exc: BaseException) -> StorageCredentialsError | None:
    """The ``StorageCredentialsError`` behind ``exc`` (a Ray task error may wrap it)."""
    return find_raised(exc, StorageCredentialsError)


def find_raised(exc: BaseException, cls: type[Exception]) -> Any:
    """An exception of exactly ``cls`` (not Ray's ``RayTaskError(cls)``) in ``exc``'s causes, or one
    rebuilt from the original's line in Ray's text (``pipeline.faults.<cls>: message``)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if type(current) is cls:
            return current
        todo += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    marker = f".{cls.__name__}: "
    for line in str(exc).splitlines():
        if marker in line:
            return cls(line.split(marker, 1)[1].strip())
    return None


class _DropTransientTracebacks(logging.Filter):
    """Log records of a ``TransientStorageError`` keep their message but lose their traceback (Ray
    Data logs the failed task's whole remote stack, ~100 lines, for what the job reports in one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and find_transient(record.exc_info[1]):
            record.exc_info, record.exc_text = None, None
            record.msg = f"{record.getMessage()} (storage unavailable; see the error below)"
            record.args = None
        return True


@contextlib.contextmanager
def quiet_transient_tracebacks(logger_name: str = "ray.data") -> Iterator[None]:
    """While inside, the handlers of ``logger_name`` print a transient storage failure without its
    traceback; every other error keeps its traceback."""
    handlers = list(logging.getLogger(logger_name).handlers)
    flt = _DropTransientTracebacks()
    for handler in handlers:
        handler.addFilter(flt)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(flt)


__all__ = [
    "CREDENTIAL_CODES",
    "RAY_RETRY_PATTERN",
    "TRANSIENT_STATUS",
    "StorageCredentialsError",
    "TransientStorageError",
    "credentials_message",
    "describe",
    "find_raised",
    "find_rejected_credentials",
    "find_transient",
    "is_transient",
    "is_transient_status",
    "quiet_transient_tracebacks",
    "rejected_credentials",
]

"""What a model source string is (local path, fsspec URL, hub id), and URLs without their credentials."""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from urllib.request import url2pathname

from diffedit.loading.errors import ModelSourceError

__all__ = ["classify_source", "redact_url"]

# A Hugging Face repo id: "org/name", letters, digits, '-', '_', '.'.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# Query parameters whose values are credentials (presigned URLs, SAS tokens, API keys).
_SECRET_QUERY_KEY = re.compile(r"token|key|secret|signature|sig|credential|password|auth", re.IGNORECASE)


def redact_url(url: str, *, keep_query: bool = True) -> str:
    """``url`` without credentials: ``user:password@`` dropped, secret-looking query values replaced
    (``keep_query=False``: the query and fragment dropped whole, as the batch job shows URIs).

    Plain paths come back unchanged; chained fsspec URLs (``a::b://...``) are redacted part by part.
    The one URL redactor of the project (``pipeline.storage.redact`` is this with ``keep_query=False``).
    """
    if "::" in url:
        return "::".join(redact_url(part, keep_query=keep_query) for part in url.split("::"))
    parts = urlsplit(url)
    if not parts.scheme or "://" not in url:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    if not keep_query:
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "REDACTED" if _SECRET_QUERY_KEY.search(k) else v) for k, v in pairs])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def classify_source(source: str) -> tuple[str, str]:
    """("local", path) | ("remote", url) | ("hub", repo_id)."""
    if "://" in source or "::" in source:
        from fsspec.utils import get_protocol

        if "::" not in source and get_protocol(source) in ("file", "local"):
            parts = urlsplit(source)
            if parts.netloc not in ("", "localhost"):
                raise ModelSourceError(
                    f"{redact_url(source)}: a file:// URL must name a local path (file:///abs/path)"
                )
            return "local", url2pathname(parts.path)
        return "remote", source
    if os.path.exists(source) or not _HUB_ID.match(source):
        return "local", source
    return "hub", source

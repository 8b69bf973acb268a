"""Fetching and decoding row images: the allow-list, size limits, EXIF orientation, RGB.

Every failure of the row's own is an ``ImageError`` whose message says what was wrong with the row; the
fetch stage turns it into a ``failed`` output row and the job goes on. Storage that keeps failing
(``pipeline.faults``) raises ``TransientStorageError`` instead: the run fails, the row is not committed.

The decompression-bomb limit is the job's ``images.max_pixels``, checked from the header before any
pixel is decoded, in whichever process decodes; Pillow's process-wide ``Image.MAX_IMAGE_PIXELS`` is
switched off there so that it neither refuses an image the job allows nor names its own limit.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit

from PIL import Image, ImageOps, UnidentifiedImageError

from diffedit.images import to_rgb
from pipeline.config import ImagesConfig, StorageConfig
from pipeline.faults import (
    TRANSIENT_STATUS,
    StorageCredentialsError,
    TransientStorageError,
    credentials_message,
    describe,
    is_transient,
    is_transient_status,
    rejected_credentials,
)
from pipeline.storage import filesystem, normalize_uri, redact, scheme_of


class ImageError(ValueError):
    """A row's image cannot be used; the message is the row's ``error``."""


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image with EXIF orientation applied, and where it came from."""

    image: Image.Image  # RGB
    width: int
    height: int
    source_mode: str  # the mode the file had
    data: bytes = b""  # the file's bytes, as fetched
    source_format: str | None = None  # PIL's name of the file's format (PNG, JPEG, WEBP, ...)
    upright: bool = True  # no EXIF rotation or flip was applied: the file shows what was edited

    @property
    def original_shows_input(self) -> bool:
        """Whether the file's own bytes show the pixels that were edited, to any reader: upright, and in
        a format every image reader (PIL, browsers, ``datasets``) decodes (``ORIGINAL_FORMATS``)."""
        return self.upright and self.source_format in ORIGINAL_FORMATS


#: The EXIF tag of the orientation (1: upright; 2-8: a rotation and/or flip, applied on decoding).
EXIF_ORIENTATION = 0x0112
#: Formats whose original bytes may stand for the input in the output (``output.input_image: original``).
ORIGINAL_FORMATS = ("PNG", "JPEG", "WEBP")
#: The encodings of the edited image (``output.image_format``) and their PIL names.
IMAGE_FORMATS = {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}


def _segments(path: str) -> list[str]:
    """A URI path's segments after resolving ``.`` and ``..`` (``/a/./b/../c`` -> ``[a, c]``); ``..``
    above the root is dropped, as servers and S3 keys normalised by ``normalize_uri`` do."""
    out: list[str] = []
    for seg in path.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    return out


def _canonical_scheme(scheme: str) -> str:
    scheme = scheme.lower()
    return {"s3a": "s3", "gcs": "gs"}.get(scheme, scheme)


def _components(uri: str) -> tuple[str, str, int | None, list[str]] | None:
    """(scheme, authority, port, path segments) of a remote URI as the allow-list compares them, or None
    when it cannot be compared safely (user info, a bad port).

    * ``s3``/``gs``: the authority is the bucket, compared exactly (bucket names are case-sensitive
      identifiers); ``s3a`` is ``s3``, ``gcs`` is ``gs``; keys are literal;
    * ``http(s)``: the authority is the host, compared case-insensitively, with the port (default 80 or
      443); the path is percent-decoded before its segments are resolved, as a server would.
    """
    parts = urlsplit(uri)
    scheme = _canonical_scheme(parts.scheme)
    if "@" in parts.netloc:
        return None  # user info: "https://good.example@evil.com/" names the host evil.com
    if scheme in ("http", "https"):
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            return None
        host = (parts.hostname or "").rstrip(".")
        return scheme, host, port, _segments(unquote(parts.path))
    return scheme, parts.netloc, None, _segments(parts.path)


def real_path(uri: str) -> str:
    """A local path or ``file://`` URI as the absolute path it really names, every symbolic link
    resolved: the allow-list compares real paths, so a link inside an allowed folder that points
    outside it (to a file or a folder) is outside."""
    return os.path.realpath(normalize_uri(uri))


def is_allowed(uri: str, allow: Sequence[str]) -> bool:
    """Whether ``uri`` lies inside one of the ``allow`` entries, compared by parsed components (scheme,
    bucket or host and port, then whole path segments), never as raw strings: ``s3://b`` does not admit
    ``s3://b-evil/x``, ``s3://b/bad`` does not admit ``s3://b/bad_evil/x``, ``https://good.example``
    does not admit ``https://good.example.evil.com/x`` nor ``https://good.example@evil.com/x``; ``..``
    cannot climb out. A bare scheme (``s3://``) allows the whole scheme; a local folder allows itself and
    everything under it; an entry naming a file allows that file. Local paths are compared as real paths
    (``real_path``): a symbolic link is judged by where it leads."""
    if not allow or not isinstance(uri, str):
        return False
    scheme = scheme_of(uri)
    local = scheme in ("file", "local")
    target = real_path(uri) if local else _components(uri)
    if target is None:
        return False
    for entry in allow:
        entry_scheme = scheme_of(entry)
        entry_local = entry_scheme in ("file", "local")
        if entry.rstrip("/").endswith(":"):  # a bare scheme: "s3://", "file://"
            if (entry_local and local) or (
                not entry_local and not local and _canonical_scheme(entry_scheme) == target[0]  # type: ignore[index]
            ):
                return True
            continue
        if entry_local != local:
            continue
        if local:
            prefix = real_path(entry)
            # A folder allows itself and what lies under it, not a sibling sharing its name's start.
            if target == prefix or target.startswith(prefix.rstrip("/") + "/"):  # type: ignore[union-attr]
                return True
            continue
        allowed = _components(entry)
        if allowed is None or not allowed[1]:
            continue
        scheme_t, auth_t, port_t, segs_t = target  # type: ignore[misc]
        scheme_a, auth_a, port_a, segs_a = allowed
        if scheme_t != scheme_a or port_t != port_a:
            continue
        same_authority = (
            auth_t.lower() == auth_a.lower() if scheme_t in ("http", "https") else auth_t == auth_a
        )
        if same_authority and segs_t[: len(segs_a)] == segs_a:
            return True
    return False


def has_user_info(uri: str) -> bool:
    """Whether a remote URI names a user (``https://user@host/``, ``s3://key:secret@bucket/``)."""
    return "://" in uri and "@" in urlsplit(uri).netloc


def shown_uri(uri: str) -> str:
    """``uri`` as messages show it: without credentials or query (``redact``), and with ``***@`` where
    user info was, so that a URI refused for its user info does not read as one the allow-list holds."""
    shown = redact(uri)
    return shown.replace("://", "://***@", 1) if has_user_info(uri) else shown


def _refused(uri: str, images: ImagesConfig) -> ImageError:
    if has_user_info(uri):
        return ImageError(
            f"image URI {shown_uri(uri)} is refused: it carries user info (name or name:password before "
            "the host), which images.allow never admits; credentials come only from the environment"
        )
    return ImageError(
        f"image URI {redact(uri)} is not in the allow-list (images.allow: {list(images.allow)})"
    )


def fetch(uri: str, images: ImagesConfig, storage: StorageConfig) -> bytes:
    """The bytes of ``uri``, refused when it is outside ``images.allow`` or over ``images.max_bytes``.

    A permanent problem (absent, denied, too large, outside the allow-list) is an ``ImageError``: the row
    fails. A transient one that outlived the storage library's retries (``pipeline.faults``) raises
    ``TransientStorageError``: the run fails and the row is not committed."""
    if not isinstance(uri, str) or not uri.strip():
        raise ImageError("image URI is empty")
    shown = redact(uri)
    if not is_allowed(uri, images.allow):
        raise _refused(uri, images)
    if scheme_of(uri) in ("http", "https"):
        data = _fetch_http(uri, images, storage)
    else:
        try:
            fs, path = filesystem(uri, storage)
            if scheme_of(uri) in ("file", "local"):
                path = real_path(uri)  # the file the allow-list checked, not a link swapped in since
            with fs.open(path, "rb") as f:
                data = f.read(images.max_bytes + 1)
        except FileNotFoundError:
            raise ImageError(f"image {shown} not found") from None
        except Exception as exc:
            rejected = rejected_credentials(exc)
            if rejected is not None:  # the run's credentials, not the row: the run stops (exit 2)
                raise StorageCredentialsError(credentials_message(f"image {shown}", rejected)) from None
            if is_transient(exc):
                raise TransientStorageError(
                    f"cannot read image {shown} after retries (storage.max_attempts = {storage.max_attempts}): "
                    f"{describe(exc)}"
                ) from None
            raise ImageError(f"cannot read image {shown}: {describe(exc)}") from None
    if len(data) > images.max_bytes:
        raise ImageError(f"image {shown} is larger than images.max_bytes = {images.max_bytes} bytes")
    return data


#: At most this many redirects are followed for one ``http(s)://`` image, each checked.
MAX_REDIRECTS = 5


def _fetch_http(uri: str, images: ImagesConfig, storage: StorageConfig) -> bytes:
    """GET ``uri`` with urllib3: connection errors, read timeouts, 429 and 5xx retried with exponential
    backoff (``storage.max_attempts``); redirects followed by hand, each ``Location`` checked against the
    allow-list before it is requested (a redirect out of it fails the row)."""
    import urllib3

    retry = urllib3.Retry(
        total=storage.max_attempts - 1,
        redirect=False,
        backoff_factor=0.5,
        backoff_max=20.0,
        status_forcelist=sorted(TRANSIENT_STATUS),
        allowed_methods=("GET",),
        raise_on_status=False,
        respect_retry_after_header=True,
    )
    timeout = urllib3.Timeout(connect=storage.connect_timeout, read=storage.read_timeout)
    url = uri
    for _ in range(MAX_REDIRECTS + 1):
        shown = redact(url)
        try:
            response = _HTTP.request(
                "GET", url, retries=retry, redirect=False, timeout=timeout, preload_content=False
            )
        except urllib3.exceptions.HTTPError as exc:  # retries exhausted on connect/read errors
            reason = getattr(exc, "reason", None) or exc
            if not is_transient(exc):
                raise ImageError(f"cannot read image {shown}: {type(reason).__name__}: {reason}") from None
            raise TransientStorageError(
                f"cannot read image {shown} after retries (storage.max_attempts = {storage.max_attempts}): "
                f"{type(reason).__name__}: {reason}"
            ) from None
        try:
            status = response.status
            if status in (301, 302, 303, 307, 308):
                location = response.headers.get("Location")
                if not location:
                    raise ImageError(f"image {shown}: HTTP {status} redirect without a Location")
                url = urljoin(url, location)
                if not is_allowed(url, images.allow):
                    raise ImageError(
                        f"image {redact(uri)} redirects to {redact(url)}, which is not in the allow-list "
                        f"(images.allow: {list(images.allow)})"
                    )
                continue
            if is_transient_status(status):
                raise TransientStorageError(
                    f"cannot read image {shown} after retries (storage.max_attempts = "
                    f"{storage.max_attempts}): HTTP {status}"
                )
            if status == 404 or status == 410:
                raise ImageError(f"image {shown} not found (HTTP {status})")
            if status != 200:
                raise ImageError(f"cannot read image {shown}: HTTP {status}")
            try:
                return response.read(images.max_bytes + 1)
            except urllib3.exceptions.HTTPError as exc:
                if not is_transient(exc):
                    raise ImageError(f"cannot read image {shown}: {type(exc).__name__}: {exc}") from None
                raise TransientStorageError(
                    f"cannot read image {shown}: {type(exc).__name__}: {exc}"
                ) from None
        finally:
            response.release_conn()
    raise ImageError(f"image {redact(uri)}: more than {MAX_REDIRECTS} redirects")


class _LazyPool:
    """One urllib3 pool manager per process, made on first use (it is not picklable)."""

    _pool = None

    def request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if _LazyPool._pool is None:
            import urllib3

            _LazyPool._pool = urllib3.PoolManager(num_pools=16, maxsize=8)
        return _LazyPool._pool.request(*args, **kwargs)


_HTTP = _LazyPool()


def decode(data: bytes, images: ImagesConfig, what: str = "image") -> DecodedImage:
    """Decode ``data``: the header is checked against the pixel and side limits before any pixel is
    decoded (the decompression-bomb guard), then the image is loaded in full (truncation is an
    error), its EXIF orientation applied and its mode converted to RGB."""
    if data is None or len(data) == 0:
        raise ImageError(f"{what} is empty (0 bytes)")
    if len(data) > images.max_bytes:
        raise ImageError(f"{what} is larger than images.max_bytes = {images.max_bytes} bytes")
    Image.MAX_IMAGE_PIXELS = None  # the job's images.max_pixels decides, below (module docstring)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(f"{what} is not a readable image (unknown or corrupt format)") from None
    except Exception as exc:
        raise ImageError(f"{what} cannot be opened: {type(exc).__name__}: {exc}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"{what} has zero size ({width}x{height})")
    if width * height > images.max_pixels:
        raise ImageError(
            f"{what} is {width}x{height} = {width * height} pixels, above images.max_pixels = "
            f"{images.max_pixels} (decompression-bomb limit)"
        )
    if max(width, height) > images.max_side:
        raise ImageError(
            f"{what} is {width}x{height}, its longer side is above images.max_side = {images.max_side}"
        )
    mode, source_format = image.mode, image.format
    if mode not in images.modes:
        raise ImageError(f"{what} has unsupported mode {mode!r} (images.modes: {list(images.modes)})")
    try:
        image.load()  # a truncated file fails here (PIL's LOAD_TRUNCATED_IMAGES stays False)
        upright = image.getexif().get(EXIF_ORIENTATION, 1) == 1
        image = ImageOps.exif_transpose(image)
        rgb = to_rgb(image)
        rgb.load()
    except Exception as exc:
        raise ImageError(f"{what} cannot be decoded: {type(exc).__name__}: {exc}") from None
    if rgb.mode != "RGB":  # pragma: no cover - to_rgb's contract
        rgb = rgb.convert("RGB")
    return DecodedImage(
        image=rgb, width=rgb.width, height=rgb.height, source_mode=mode, data=data,
        source_format=source_format, upright=upright,
    )  # fmt: skip


def load_row_image(
    uri: str | None, data: bytes | None, images: ImagesConfig, storage: StorageConfig
) -> DecodedImage:
    """A row's image from its ``image`` URI or its ``image_bytes`` (exactly one must be set)."""
    has_uri = uri is not None and uri != ""
    has_bytes = data is not None and len(data) > 0
    if has_uri and has_bytes:
        raise ImageError("row sets both image and image_bytes; set exactly one")
    if has_bytes:
        return decode(data, images, "image_bytes")  # type: ignore[arg-type]
    if has_uri:
        return decode(fetch(uri, images, storage), images, f"image {redact(uri)}")  # type: ignore[arg-type]
    if data is not None:
        raise ImageError("image_bytes is empty (0 bytes)")
    raise ImageError("row has no image (image and image_bytes are both empty)")


def encode_image(image: Image.Image, fmt: str = "png", quality: int = 90) -> bytes:
    """``image`` encoded as ``fmt`` (``IMAGE_FORMATS``): PNG at compress level 6 (PIL's default, a balance
    of size and speed; lossless), or WebP / JPEG at ``quality`` (1-100, lossy; JPEG without chroma
    subsampling, so thin coloured edges keep their colour)."""
    buffer = io.BytesIO()
    name = IMAGE_FORMATS[fmt]
    if name == "PNG":
        image.save(buffer, format="PNG")
    elif name == "JPEG":
        image.save(buffer, format="JPEG", quality=quality, subsampling=0)
    else:
        image.save(buffer, format="WEBP", quality=quality, method=4)
    return buffer.getvalue()


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of ``image`` (``encode_image``)."""
    return encode_image(image, "png")

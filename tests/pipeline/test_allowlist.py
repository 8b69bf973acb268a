"""Issue 10, item 4: the allow-list compares parsed components (scheme, bucket or host and port, whole
path segments), never raw string prefixes; an https redirect out of it is refused."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest
from pipeline_testing import png_bytes

from pipeline.config import ImagesConfig, StorageConfig
from pipeline.faults import TransientStorageError
from pipeline.images import ImageError, fetch, is_allowed


@pytest.mark.parametrize(
    ("uri", "allow", "expected"),
    [
        ("s3://rel-bucket/x.png", "s3://rel-bucket", True),
        ("s3://rel-bucket-evil/secret.png", "s3://rel-bucket", False),  # the end-to-end leak
        ("s3://rel-bucket-evil/secret.png", "s3://rel-bucket/", False),
        ("s3://b/bad/x.png", "s3://b/bad", True),
        ("s3://b/bad_evil/x.png", "s3://b/bad", False),
        ("s3://b/bad/../bad_evil/x.png", "s3://b/bad", False),
        ("s3://B/bad/x.png", "s3://b/bad", False),  # bucket names are exact
        ("s3a://b/bad/x.png", "s3://b/bad", True),
        ("gs://b/bad/x.png", "s3://b/bad", False),
        ("https://good.example/x.png", "https://good.example", True),
        ("https://GOOD.Example/x.png", "https://good.example", True),  # host names are case-insensitive
        ("https://good.example:443/x.png", "https://good.example", True),
        ("https://good.example:8443/x.png", "https://good.example", False),
        ("https://good.example.evil.com/x.png", "https://good.example", False),
        ("https://good.example@evil.com/x.png", "https://good.example", False),
        ("https://user@good.example/x.png", "https://good.example", False),  # user info is never allowed
        ("http://good.example/x.png", "https://good.example", False),
        ("https://good.example/imgs/a.png", "https://good.example/imgs/", True),
        ("https://good.example/imgs2/a.png", "https://good.example/imgs", False),
        ("https://good.example/imgs/%2e%2e/secret.png", "https://good.example/imgs/", False),
        ("https://good.example/imgs/a.png?sig=1", "https://good.example/imgs/", True),
        ("s3://anything/x.png", "s3://", True),
        ("https://anything/x.png", "s3://", False),
    ],
)
def test_allow_list_compares_parsed_components(uri, allow, expected):
    assert is_allowed(uri, (allow,)) is expected


class _Handler(http.server.BaseHTTPRequestHandler):
    """/img.png: an image; /in: a redirect to /img.png; /out: a redirect to another host; /gone: 404;
    /busy: 503 for ever."""

    image = png_bytes(0, (8, 8))

    def do_GET(self) -> None:
        host, port = self.server.server_address[:2]
        routes = {
            "/in": (302, f"http://{host}:{port}/img.png"),
            "/out": (302, f"http://localhost:{port}/img.png"),  # same server, another host name
            "/relative": (301, "img.png"),
        }
        if self.path == "/img.png":
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.image)))
            self.end_headers()
            self.wfile.write(self.image)
        elif self.path in routes:
            code, location = routes[self.path]
            self.send_response(code)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/busy":
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_redirects_are_checked_against_the_allow_list(http_server):
    images = ImagesConfig(allow=(http_server + "/",))
    storage = StorageConfig(max_attempts=2, connect_timeout=1, read_timeout=2)
    assert fetch(f"{http_server}/img.png", images, storage) == _Handler.image
    assert fetch(f"{http_server}/in", images, storage) == _Handler.image  # a redirect inside: followed
    assert fetch(f"{http_server}/relative", images, storage) == _Handler.image
    port = http_server.rsplit(":", 1)[1]
    with pytest.raises(
        ImageError, match=rf"redirects to http://localhost:{port}/img.png, which is not in the allow-list"
    ):
        fetch(f"{http_server}/out", images, storage)
    with pytest.raises(ImageError, match="not found"):
        fetch(f"{http_server}/gone", images, storage)
    with pytest.raises(TransientStorageError, match="HTTP 503"):  # retried, then not the row's fault
        fetch(f"{http_server}/busy", images, storage)

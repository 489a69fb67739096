"""GGUF headers read over HTTP Range from a loopback server, as for a Hugging Face file not downloaded yet."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from contracts.gguf_header import GgufError
from services.runtime.gguf_io import read_file_header, read_url_header
from tests.harness.gguf_builder import SHAPE_7B, write_sparse_llama, write_tiny_llama
from tests.peers.hub_server import HubPeer, small_file

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("gguf-http")
    return {"tiny": write_tiny_llama(d / "tiny.gguf"), "7b": write_sparse_llama(d / "7b.gguf", SHAPE_7B)}


class _RangeServer:
    """Serves one file; honours `Range: bytes=a-b` (206) unless `ignore_range` (then a full 200 body)."""

    def __init__(self, path: Path, ignore_range: bool = False):
        self.path, self.ignore_range, self.ranges = path, ignore_range, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.path != f"/{outer.path.name}":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                size = outer.path.stat().st_size
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                with outer.path.open("rb") as f:
                    if rng and not outer.ignore_range:
                        a, b = (int(x) for x in rng.removeprefix("bytes=").split("-"))
                        b = min(b, size - 1)
                        f.seek(a)
                        body = f.read(b - a + 1)
                        self.send_response(206)
                        self.send_header("Content-Range", f"bytes {a}-{b}/{size}")
                    else:
                        body = f.read(min(size, 64 << 20))
                        self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    try:
                        self.wfile.write(body)
                    except (BrokenPipeError, ConnectionResetError):
                        pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{self.path.name}"

    def __enter__(self) -> _RangeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def range_server(files: dict[str, Path]) -> Iterator[_RangeServer]:
    with _RangeServer(files["7b"]) as server:
        yield server


async def test_header_over_http_range(range_server: _RangeServer, files: dict[str, Path]) -> None:
    header, total = await read_url_header(range_server.url, first_read=64 << 10)
    assert total == files["7b"].stat().st_size
    assert header.tensors == read_file_header(files["7b"]).tensors
    assert len(range_server.ranges) >= 2 and all(r and r.startswith("bytes=0-") for r in range_server.ranges)


async def test_header_over_http_without_range_support(files: dict[str, Path]) -> None:
    with _RangeServer(files["tiny"], ignore_range=True) as server:
        header, _ = await read_url_header(server.url)
    assert header.tensors == read_file_header(files["tiny"]).tensors


async def test_http_errors_are_named(range_server: _RangeServer) -> None:
    with pytest.raises(GgufError, match=r"cannot read http://127\.0\.0\.1:1/"):
        await read_url_header("http://127.0.0.1:1/nothing.gguf")
    with pytest.raises(GgufError, match="answered 404"):
        await read_url_header(range_server.url.replace("7b.gguf", "missing.gguf"))


async def test_header_of_a_hub_file_not_downloaded_yet(files: dict[str, Path]) -> None:
    """A Hugging Face `resolve` URL: a 302 to the CDN origin, then Range reads there (the project's hub peer)."""
    data = files["tiny"].read_bytes()
    with HubPeer() as hub:
        sha = hub.repo("someone/tiny-GGUF").commit([small_file("tiny-Q8_0.gguf", data)])
        url = f"{hub.url}/someone/tiny-GGUF/resolve/{sha}/tiny-Q8_0.gguf"
        header, total = await read_url_header(url, first_read=4096)  # smaller than the file: Range is honoured
        cdn = [r for method, path, r in hub.requests if method == "GET" and path.startswith("/blobs/")]
    assert total == len(data)
    assert header.tensors == read_file_header(files["tiny"]).tensors
    assert cdn == ["bytes=0-4095", "bytes=0-8191", "bytes=0-16383"]  # doubling until the header is whole

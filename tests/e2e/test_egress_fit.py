"""`GET /api/v1/fit?gguf_url=` through the real gateway process under the egress policy: a loopback URL is refused
without a connection and without a word about what listens there; a redirect to loopback is refused at the hop; an
allowlisted origin is read as before."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.runtime.gguf_io import read_file_header
from tests.harness.gguf_builder import write_tiny_llama

pytestmark = pytest.mark.e2e

ADMIN = "egress-admin-token"
LEAKS = ("refused", "connect", "timeout", "timed out", "reset", "errno", "unreachable", "answered")


@contextmanager
def listening() -> Iterator[tuple[socket.socket, int]]:
    """A real listening socket (where NATS or a database would be) that never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    try:
        yield sock, sock.getsockname()[1]
    finally:
        sock.close()


def connections(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return n
        conn.close()
        n += 1


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def files_and_redirects(data: bytes, redirect_to: str, seen: list[str]) -> type[BaseHTTPRequestHandler]:
    """`/tiny.gguf` with Range; `/moved.gguf` a 302 to `redirect_to`."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.path)
            if self.path == "/moved.gguf":
                self.send_response(302)
                self.send_header("Location", redirect_to)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            a, b = (int(x) for x in self.headers["Range"].removeprefix("bytes=").split("-"))
            body = data[a : b + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {a}-{a + len(body) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def assert_refused(answer: httpx.Response, host: str) -> None:
    assert answer.status_code == 403, answer.text
    body = answer.json()
    assert body["code"] == "egress_not_allowed" and body["field"] == "gguf_url"
    assert "not allowed" in body["detail"] and repr(host) in body["detail"]
    assert not any(word in body["detail"].lower() for word in LEAKS), body["detail"]


async def test_fit_refuses_loopback_urls_and_redirects_to_them(
    tmp_path: Path, service_env: Callable[..., dict[str, str]], start_gateway: Callable[..., Any]
) -> None:
    tiny = write_tiny_llama(tmp_path / "tiny.gguf")
    seen: list[str] = []
    with listening() as (inner, inner_port):
        target = f"http://127.0.0.1:{inner_port}/x.gguf"
        with serving(files_and_redirects(tiny.read_bytes(), target, seen)) as origin:
            strict = await start_gateway(service_env(MODELFLEET_ADMIN_TOKEN=ADMIN, MODELFLEET_EGRESS_ALLOW=""))
            # the origin stands for a public host: allowlisted by address and port, loopback's other ports are not
            allowing = await start_gateway(
                service_env(MODELFLEET_ADMIN_TOKEN=ADMIN, MODELFLEET_EGRESS_ALLOW=f"127.0.0.1:{origin}")
            )
            auth = {"Authorization": f"Bearer {ADMIN}"}
            async with httpx.AsyncClient(base_url=strict, timeout=30, headers=auth) as client:
                # no allowlist: the listening port and a decimal spelling of loopback, refused alike
                listening_answer = await client.get("/api/v1/fit", params={"gguf_url": target})
                assert_refused(listening_answer, "127.0.0.1")
                decimal = await client.get("/api/v1/fit", params={"gguf_url": f"http://2130706433:{inner_port}/x"})
                assert_refused(decimal, "2130706433")
                closed = await client.get("/api/v1/fit", params={"gguf_url": "http://127.0.0.1:1/x.gguf"})
                assert closed.json()["detail"] == listening_answer.json()["detail"]  # open or closed: same words
                metadata = await client.get("/api/v1/fit", params={"gguf_url": "http://169.254.169.254/latest/x"})
                assert_refused(metadata, "169.254.169.254")
                origin_refused = await client.get(
                    "/api/v1/fit", params={"gguf_url": f"http://127.0.0.1:{origin}/tiny.gguf"}
                )
                assert_refused(origin_refused, "127.0.0.1")
            assert seen == []  # the strict gateway contacted nothing
            async with httpx.AsyncClient(base_url=allowing, timeout=30, headers=auth) as client:
                moved = await client.get("/api/v1/fit", params={"gguf_url": f"http://127.0.0.1:{origin}/moved.gguf"})
                assert_refused(moved, "127.0.0.1")  # refused at the redirect hop
                assert seen == ["/moved.gguf"]
                fit = await client.get(
                    "/api/v1/fit", params={"gguf_url": f"http://127.0.0.1:{origin}/tiny.gguf", "num_ctx": 1024}
                )
        assert connections(inner) == 0  # the inner listener never saw a connection from either gateway
    assert fit.status_code == 200, fit.text
    report = fit.json()
    header = read_file_header(tiny)
    assert report["source"] == "gguf" and report["model"].endswith("/tiny.gguf")
    assert report["shape"]["block_count"] == header.metadata["llama.block_count"]

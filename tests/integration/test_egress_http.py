"""The egress policy on real sockets: the GGUF header reader, a redirect hop, the hub's CDN hop, an Ollama pull of a
model named with a registry host, and the registry digest check. A refused destination never sees a connection."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from contracts.gguf_header import GgufError
from services.provisioner import domain
from services.provisioner.hub import HubClient
from services.provisioner.ollama_backend import BackendError, OllamaBackend
from services.provisioner.registry import OllamaRegistry, RegistryError
from services.runtime.egress import EgressDenied, EgressPolicy, EgressTransport
from services.runtime.gguf_io import read_file_header, read_url_header
from tests.harness.gguf_builder import write_tiny_llama
from tests.peers.hub_server import HubPeer, small_file
from tests.peers.ollama_server import OllamaPeer

pytestmark = pytest.mark.integration

#: Words that would tell a caller what answered (or did not) behind the policy.
LEAKS = ("refused", "connect", "timeout", "timed out", "reset", "errno", "unreachable", "answered")


class Listener:
    """A real listening socket that never answers: counts the connections it was offered."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def connections(self) -> int:
        """Connections in the accept queue: the kernel completes a handshake before the client's connect returns."""
        n = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return n
            conn.close()
            n += 1


@pytest.fixture
def listener() -> Iterator[Listener]:
    it = Listener()
    try:
        yield it
    finally:
        it.sock.close()


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def redirector(target: str, seen: list[str]) -> type[BaseHTTPRequestHandler]:
    class Redirect(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Redirect


def range_files(data: bytes, hosts: list[str]) -> type[BaseHTTPRequestHandler]:
    class Files(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            hosts.append(self.headers["Host"])
            a, b = (int(x) for x in self.headers["Range"].removeprefix("bytes=").split("-"))
            body = data[a : b + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {a}-{a + len(body) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Files


def assert_says_only_not_allowed(message: str, host: str) -> None:
    assert "not allowed" in message and repr(host) in message
    assert not any(word in message.lower() for word in LEAKS), message


@pytest.mark.parametrize("host", ["127.0.0.1", "2130706433", "0x7f000001", "[::ffff:127.0.0.1]", "localhost"])
async def test_a_refused_gguf_url_makes_no_connection(listener: Listener, host: str) -> None:
    url = f"http://{host}:{listener.port}/x.gguf"
    with pytest.raises(EgressDenied) as refused:
        await read_url_header(url, egress=EgressPolicy())
    assert_says_only_not_allowed(str(refused.value), host.strip("[]"))
    assert listener.connections() == 0


async def test_an_open_and_a_closed_port_are_refused_in_the_same_words(listener: Listener) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()  # bound then closed: nothing listens there
    words = []
    for port in (listener.port, closed_port):
        with pytest.raises(EgressDenied) as refused:
            await read_url_header(f"http://127.0.0.1:{port}/x.gguf", egress=EgressPolicy())
        words.append(str(refused.value))
    assert words[0] == words[1]
    assert listener.connections() == 0


async def test_a_redirect_to_loopback_is_refused_at_the_hop(listener: Listener) -> None:
    """The first hop is allowlisted (it stands for a public host); it redirects to a loopback port that is not."""
    for target in (f"http://127.0.0.1:{listener.port}/x.gguf", f"http://localhost:{listener.port}/x.gguf"):
        seen: list[str] = []
        with http_server(redirector(target, seen)) as first:
            policy = EgressPolicy([f"127.0.0.1:{first}"])
            with pytest.raises(EgressDenied) as refused:
                await read_url_header(f"http://127.0.0.1:{first}/model.gguf", egress=policy)
        assert seen == ["/model.gguf"]  # the first hop was asked, once
        assert_says_only_not_allowed(str(refused.value), target.split("//")[1].split(":")[0])
        assert listener.connections() == 0


async def test_allowlisted_destinations_work_as_before_and_keep_their_host_header(tmp_path: Path) -> None:
    tiny = write_tiny_llama(tmp_path / "tiny.gguf")
    hosts: list[str] = []
    with http_server(range_files(tiny.read_bytes(), hosts)) as files:
        seen: list[str] = []
        with http_server(redirector(f"http://127.0.0.1:{files}/tiny.gguf", seen)) as first:
            policy = EgressPolicy([f"127.0.0.1:{first}", f"127.0.0.1:{files}"])
            header, total = await read_url_header(f"http://127.0.0.1:{first}/tiny.gguf", egress=policy)
            via_decimal, _ = await read_url_header(f"http://2130706433:{files}/tiny.gguf", egress=policy)
    assert header.tensors == via_decimal.tensors == read_file_header(tiny).tensors
    assert total == tiny.stat().st_size and seen == ["/tiny.gguf"]
    # the connection is pinned to the checked address; the request still names the host the URL gave
    assert f"127.0.0.1:{files}" in hosts and f"2130706433:{files}" in hosts


async def test_other_failures_of_an_allowed_host_are_still_named(listener: Listener) -> None:
    """Only refusals are mute: an allowlisted host's HTTP errors keep their text (the operator allowed it)."""
    with pytest.raises(GgufError, match="cannot read"):
        await read_url_header("http://127.0.0.1:1/x.gguf", egress=EgressPolicy(["127.0.0.1:1"]))


def test_the_hub_cdn_hop_goes_through_the_policy(tmp_path: Path) -> None:
    """The hub endpoint is allowed (configured); its CDN origin on another loopback port is not: no byte is fetched."""
    data = b"GGUF" + bytes(range(256)) * 64
    with HubPeer() as peer:
        sha = peer.repo("acme/tiny-GGUF").commit([small_file("tiny.gguf", data)])
        refused = HubClient(
            peer.url, None, tmp_path / "models", tmp_path / "q", egress=EgressPolicy(endpoints=[peer.url])
        )
        f = refused.files("acme/tiny-GGUF", sha)["tiny.gguf"]
        with pytest.raises(EgressDenied) as denied:
            refused.download("acme/tiny-GGUF", sha, f)
        assert [p for _, p, _ in peer.requests if p.startswith("/blobs/")] == []
        assert_says_only_not_allowed(str(denied.value), "127.0.0.1")
        allowed = HubClient(
            peer.url, None, tmp_path / "models", tmp_path / "q", egress=EgressPolicy([peer.cdn_url.split("//")[1]])
        )
        got = allowed.download("acme/tiny-GGUF", sha, f)
    assert got.path.read_bytes() == data and got.sha256 == f.sha256


async def test_an_ollama_pull_of_a_name_with_a_refused_registry_host_is_not_sent(listener: Listener) -> None:
    with OllamaPeer() as peer:
        backend = OllamaBackend(peer.url, egress=EgressPolicy())  # the operator's Ollama itself is configured
        name = f"127.0.0.1:{listener.port}/team/m:v1"
        with pytest.raises(BackendError) as refused:
            await backend.pull(name, lambda *_: None)
        assert refused.value.channel == "egress"
        assert_says_only_not_allowed(str(refused.value), "127.0.0.1")
        assert peer.pull_requests == [] and await backend.installed() == {}
    assert listener.connections() == 0


async def test_the_registry_digest_check_refuses_a_loopback_registry(listener: Listener) -> None:
    registry = OllamaRegistry(timeout_s=5, transport=EgressTransport(EgressPolicy()))
    try:
        ref = domain.registry_ref(f"127.0.0.1:{listener.port}/team/m:v1", "https://registry.ollama.ai")
        with pytest.raises(RegistryError) as refused:
            await registry.digest(ref)
    finally:
        await registry.close()
    assert_says_only_not_allowed(str(refused.value), "127.0.0.1")
    assert listener.connections() == 0

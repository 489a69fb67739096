"""A server that takes every connection and never sends a byte: the connect succeeds, the read waits for ever, as with a
hung process behind a live socket. It keeps what each connection sent, so a test can tell that its caller got as
far as sending its request."""

from __future__ import annotations

import selectors
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

#: How many times to look for one port free on every address a name resolves to.
PORT_TRIES = 20


@dataclass
class SilentServer:
    port: int
    addresses: list[str]
    _received: list[bytearray] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self) -> list[bytes]:
        """What each accepted connection sent so far, in the order they came."""
        with self._lock:
            return [bytes(b) for b in self._received]


def _listen_all(host: str) -> tuple[list[socket.socket], int, list[str]]:
    """One listening socket per address `host` resolves to, all on the same free port (a caller that uses whichever
    address its resolver gives first finds the server there)."""
    infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(str(i[4][0]) for i in infos))
    families = {str(i[4][0]): i[0] for i in infos}
    for _ in range(PORT_TRIES):
        sockets: list[socket.socket] = []
        port = 0
        try:
            for address in addresses:
                s = socket.socket(families[address], socket.SOCK_STREAM)
                sockets.append(s)
                if families[address] == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind((address, port))
                s.listen(16)
                port = s.getsockname()[1]
            return sockets, port, addresses
        except OSError:  # that port is taken on another of the addresses: try another
            for s in sockets:
                s.close()
    raise AssertionError(f"no port free on every address of {host!r} ({addresses}) in {PORT_TRIES} tries")


@contextmanager
def silent_server(host: str = "127.0.0.1") -> Iterator[SilentServer]:
    """Listens on every address of `host`, accepts, reads and never answers; every socket is closed on exit."""
    listeners, port, addresses = _listen_all(host)
    server = SilentServer(port=port, addresses=addresses)
    wake_r, wake_w = socket.socketpair()
    selector = selectors.DefaultSelector()
    for s in listeners:
        s.setblocking(False)
        selector.register(s, selectors.EVENT_READ, None)
    selector.register(wake_r, selectors.EVENT_READ, "stop")
    connections: list[socket.socket] = []

    def serve() -> None:
        while True:
            for key, _ in selector.select():
                if key.data == "stop":
                    return
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if key.data is None:  # a listener: take the connection, keep it open, never write to it
                    conn, _ = sock.accept()
                    conn.setblocking(False)
                    with server._lock:
                        server._received.append(bytearray())
                        index = len(server._received) - 1
                    connections.append(conn)
                    selector.register(conn, selectors.EVENT_READ, index)
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:  # the caller gave up: forget the socket (closed on exit)
                    selector.unregister(sock)
                    continue
                with server._lock:
                    server._received[key.data].extend(data)

    thread = threading.Thread(target=serve, name="silent-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        wake_w.send(b"x")
        thread.join(timeout=5)
        for s in [*connections, *listeners, wake_r, wake_w]:
            s.close()
        selector.close()

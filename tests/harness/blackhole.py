"""An address that never answers: a listening socket whose accept queue is full, so a connect to it hangs (the
kernel drops the SYN) until the caller's own connect timeout, as with a firewalled or vanished host."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def blackhole() -> Iterator[int]:
    """Yields a loopback port that takes no connection: `listen(0)` and one connection that fills the queue."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        filler.connect(("127.0.0.1", port))  # never accepted: the queue stays full
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.settimeout(0.2)
        try:  # the premise of every test that uses it: a connect here does not complete
            probe.connect(("127.0.0.1", port))
        except TimeoutError:
            pass
        else:
            raise AssertionError("the blackhole port took a connection")
        finally:
            probe.close()
        yield port
    finally:
        filler.close()
        server.close()

"""Embedded servers on ports picked for them: never a port an outgoing connection can be given, and a port another
process took first means a start on new ports, not a failed fleet (a CI run once lost nats-server to
`bind: address already in use` after a client's connection was given the port it had been picked)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.runtime import embedded
from services.runtime.embedded import EmbeddedNats, EmbeddedPostgres, EmbeddedServerError, free_port

pytestmark = pytest.mark.integration


def _ephemeral() -> range:
    low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return range(low, high + 1)


def test_a_picked_port_is_outside_the_range_of_outgoing_connections_and_given_once() -> None:
    ephemeral = _ephemeral()
    assert ephemeral.start > embedded.PORT_FLOOR or ephemeral.stop <= 65535, f"no port outside {ephemeral} here"
    ports = [free_port() for _ in range(200)]
    assert not [p for p in ports if p in ephemeral]
    assert len(set(ports)) == len(ports)
    with socket.socket() as client:  # what a client's connection gets: a port from the kernel's range
        client.bind(("127.0.0.1", 0))
        assert client.getsockname()[1] in ephemeral


def test_where_the_kernels_range_covers_every_port_its_picks_are_still_given_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(embedded, "_ephemeral_range", lambda: (1024, 65535))
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports) and all(1024 <= p <= 65535 for p in ports)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process listens on, as if it had bound it between our pick and the server's bind."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _picks_taken_first(monkeypatch: pytest.MonkeyPatch, taken: int) -> list[int]:
    picked: list[int] = []

    def pick() -> int:
        picked.append(taken if not picked else free_port())
        return picked[-1]

    monkeypatch.setattr(embedded, "free_port", pick)
    return picked


def test_nats_starts_on_new_ports_when_its_picked_port_was_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, taken_port: int
) -> None:
    picked = _picks_taken_first(monkeypatch, taken_port)
    server = EmbeddedNats(tmp_path / "nats").start()
    try:
        assert picked[0] == taken_port and server.port not in (taken_port, 0)
        assert len(picked) == 4  # client and monitor ports, twice
        assert "address already in use" in (tmp_path / "nats" / "nats-server.log").read_text()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
            assert conn.recv(4096).startswith(b"INFO ")
    finally:
        server.stop()


def test_nats_on_a_port_the_caller_chose_fails_naming_it(tmp_path: Path, taken_port: int) -> None:
    with pytest.raises(EmbeddedServerError, match=f"127.0.0.1:{taken_port}.*address already in use"):
        EmbeddedNats(tmp_path / "nats", port=taken_port).start()


def test_postgres_starts_on_a_new_port_when_its_picked_port_was_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, taken_port: int
) -> None:
    picked = _picks_taken_first(monkeypatch, taken_port)
    server = EmbeddedPostgres(tmp_path / "pg" / "data", fsync=False).start()
    try:
        assert picked == [taken_port, server.port]
        assert "address already in use" in (tmp_path / "pg" / "postgres.log").read_text().lower()
        assert server._accepting()
    finally:
        server.stop()

"""Where the tests' NATS and PostgreSQL come from, in order: an environment URL, Docker, the embedded binaries.

`MODELFLEET_TEST_BACKEND=env|docker|embedded` forces one; a forced backend that is missing fails loudly.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from services.runtime.embedded import EmbeddedNats, EmbeddedPostgres


def forced_backend() -> str | None:
    value = os.environ.get("MODELFLEET_TEST_BACKEND") or None
    if value not in (None, "env", "docker", "embedded"):
        raise RuntimeError(f"MODELFLEET_TEST_BACKEND={value!r}: use env, docker or embedded")
    return value


def docker_answers(timeout_s: float = 3.0) -> bool:
    """Ping the Docker engine with a hard timeout: a socket that accepts and never answers must not hang us."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(timeout_s)
            s.connect(host[len("unix://") :])
        else:
            u = urlparse(host)
            s = socket.create_connection((u.hostname or "127.0.0.1", u.port or 2375), timeout=timeout_s)
        with s:
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b"OK" in s.recv(1024)
    except OSError:
        return False


def choose(env_var: str) -> str:
    forced = forced_backend()
    if forced == "env" and not os.environ.get(env_var):
        raise RuntimeError(f"MODELFLEET_TEST_BACKEND=env but {env_var} is not set")
    if forced in (None, "env") and os.environ.get(env_var):
        return "env"
    if forced == "docker":
        if not docker_answers():
            raise RuntimeError("MODELFLEET_TEST_BACKEND=docker but no Docker engine answers a 3 s ping")
        return "docker"
    if forced is None and docker_answers():
        return "docker"
    return "embedded"


@contextmanager
def nats_server(tmp: Path) -> Iterator[str]:
    kind = choose("MODELFLEET_TEST_NATS_URL")
    if kind == "env":
        yield os.environ["MODELFLEET_TEST_NATS_URL"]
    elif kind == "docker":
        from testcontainers.nats import NatsContainer  # type: ignore[import-untyped]

        with NatsContainer(jetstream=True) as c:
            yield c.nats_uri()
    else:
        server = EmbeddedNats(tmp / "nats").start()
        try:
            yield server.url
        finally:
            server.stop()


@contextmanager
def postgres_server(tmp: Path) -> Iterator[str]:
    kind = choose("MODELFLEET_TEST_DATABASE_URL")
    if kind == "env":
        yield os.environ["MODELFLEET_TEST_DATABASE_URL"]
    elif kind == "docker":
        from testcontainers.postgres import PostgresContainer  # type: ignore[import-untyped]

        with PostgresContainer("postgres:18-alpine", driver="asyncpg") as c:
            yield c.get_connection_url()
    else:
        server = EmbeddedPostgres(tmp / "pg" / "data", fsync=False).start()
        try:
            yield server.url
        finally:
            server.stop()


async def create_database(server_url: str) -> str:
    """A fresh, empty database on the same server, so each test starts from nothing."""
    import asyncpg

    u = urlparse(server_url.replace("+asyncpg", ""))
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(
        host=u.hostname, port=u.port, user=u.username, password=u.password, database=(u.path or "/postgres")[1:]
    )
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server_url.rsplit("/", 1)[0] + f"/{name}"

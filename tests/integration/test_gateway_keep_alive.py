"""The gateway keeps an idle client connection open longer than clients keep it (httpx, and so the `openai` client,
5 s), so that the client closes it first: at uvicorn's own 5 s the gateway closed connections as clients reused them,
and those requests failed with a read error. `MODELFLEET_GATEWAY_KEEP_ALIVE_S` sets it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.runtime.embedded import free_port
from tests.harness.processes import GatewayProcess

pytestmark = pytest.mark.integration

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"


async def _gateway(tmp_path: Path, **env: str) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    # No bus is needed: /healthz asks nobody, and the gateway starts while its bus connection is retried.
    proc = GatewayProcess("gateway", {"MODELFLEET_NATS_URL": f"nats://127.0.0.1:{free_port()}", **env},
                          tmp_path / "gateway.log").start()  # fmt: skip
    try:
        url = await proc.wait_ready(60)
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        try:
            yield reader, writer
        finally:
            writer.close()
    finally:
        proc.stop()


async def _healthz(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(HEALTHZ)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.lower().split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length"))
    await reader.readexactly(length)
    return head.split(b"\r\n")[0]


async def test_an_idle_connection_outlives_the_clients_five_seconds(tmp_path: Path) -> None:
    async for reader, writer in _gateway(tmp_path):
        assert await _healthz(reader, writer) == b"HTTP/1.1 200 OK"
        await asyncio.sleep(6.5)  # past httpx's idle expiry and uvicorn's own default keep-alive (5 s)
        assert not reader.at_eof(), "the gateway closed an idle connection a client may still reuse"
        assert await _healthz(reader, writer) == b"HTTP/1.1 200 OK"


async def test_the_keep_alive_is_a_setting(tmp_path: Path) -> None:
    async for reader, writer in _gateway(tmp_path, MODELFLEET_GATEWAY_KEEP_ALIVE_S="1"):
        assert await _healthz(reader, writer) == b"HTTP/1.1 200 OK"
        # The gateway closes the idle connection after its 1 s (the read ends), well before uvicorn's own 5 s.
        assert await asyncio.wait_for(reader.read(), 4) == b""

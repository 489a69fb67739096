"""The gateway reuses an idle backend connection only while the backend would still take a request on it: a server
closes idle connections after its own keep-alive (uvicorn's and llama.cpp's: 5 s), and a request sent on a connection
as the server closes it fails and counts against the backend. The server here makes that race certain: a request that
arrives on a connection idle for `CLOSES_AFTER_S` is dropped unanswered, as when a server's idle timer fires."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from services.gateway.backends import BackendError, ChatCall, OpenAIBackend

pytestmark = pytest.mark.integration

CLOSES_AFTER_S = 0.8
ANSWER = {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}  # fmt: skip


@asynccontextmanager
async def closing_server() -> AsyncIterator[tuple[str, list[int]]]:
    """An OpenAI-compatible server of one answer; yields its base URL and a count of the connections it took."""
    connections = [0]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        idle_since: float | None = None
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if idle_since is not None and time.monotonic() - idle_since >= CLOSES_AFTER_S:
                    return  # the idle timer fired as the request came: closed, unanswered
                length = next(int(v) for k, _, v in (line.decode().partition(":") for line in head.split(b"\r\n"))
                              if k.lower() == "content-length")  # fmt: skip
                await reader.readexactly(length)
                body = json.dumps(ANSWER).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(body), body))  # fmt: skip
                await writer.drain()
                idle_since = time.monotonic()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1", connections
    finally:
        server.close()


def call() -> ChatCall:
    return ChatCall(client_model="coding", messages=[{"role": "user", "content": "hi"}], options={})


async def _twice_with_an_idle_gap(keep_alive_s: float) -> tuple[BackendError | None, int]:
    async with closing_server() as (base_url, connections):
        backend = OpenAIBackend(connect_timeout_s=2, read_timeout_s=10, max_connections=8, keep_alive_s=keep_alive_s)
        try:
            assert (await backend.complete(base_url, "m", call()))["choices"][0]["message"]["content"] == "hi"
            await asyncio.sleep(CLOSES_AFTER_S + 0.3)
            try:
                await backend.complete(base_url, "m", call())
            except BackendError as exc:
                return exc, connections[0]
            return None, connections[0]
        finally:
            await backend.aclose()


async def test_an_idle_connection_past_the_keep_alive_is_not_reused() -> None:
    failure, connections = await _twice_with_an_idle_gap(keep_alive_s=CLOSES_AFTER_S / 2)
    assert failure is None
    assert connections == 2  # a new connection for the second request


async def test_reusing_it_past_the_servers_idle_close_fails_the_request() -> None:
    """The race the keep-alive bound avoids, shown with aiohttp's own default (15 s)."""
    failure, connections = await _twice_with_an_idle_gap(keep_alive_s=15)
    assert failure is not None and connections == 1

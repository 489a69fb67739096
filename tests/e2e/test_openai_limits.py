"""Per-backend concurrency limits through the gateway's /v1/, driven by the official `openai` client: catalog, router
and gateway processes, real NATS and PostgreSQL, the project's Ollama peer holding a streamed answer open."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats
import openai
import pytest

from contracts.router import BackendCallCompleted, BackendCallsCompleted
from contracts.vram import GIB
from tests.harness.cli import ADMIN_TOKEN
from tests.harness.fleet_events import gpu_sample, publish
from tests.harness.waiting import eventually
from tests.peers.ollama_server import OllamaPeer

pytestmark = pytest.mark.e2e

CODER = "qwen3-coder:30b"  # the default set's `coding` model
HOST = "b-live"
ASK = [{"role": "user", "content": "hello there"}]


@pytest.fixture
async def fleet(nats_url, database_url, service_env, start_service, start_gateway) -> AsyncIterator[dict[str, Any]]:
    """One host whose Ollama (the peer) takes one call at a time (`MAX_IN_FLIGHT_BY_BACKEND`, by host id)."""
    with OllamaPeer() as peer:
        peer.install(CODER)
        env = service_env(database_url=database_url, MODELFLEET_ADMIN_TOKEN=ADMIN_TOKEN)
        await start_service("catalog", env)
        await start_service("router", service_env(MODELFLEET_ROUTER_MAX_IN_FLIGHT_BY_BACKEND=f'{{"{HOST}": 1}}'))
        url = await start_gateway(env)
        nc = await nats.connect(nats_url)
        await publish(nc.jetstream(), gpu_sample(HOST, peer.url, (CODER,), size_bytes=GIB, context_length=8192))
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=ADMIN_TOKEN, max_retries=0, timeout=30)
        try:
            # the router folds the sample asynchronously: until the role is served (bounded)
            await eventually(lambda: client.chat.completions.create(model="coding", messages=ASK), 20, "a route")
            yield {"url": url, "client": client, "nc": nc, "peer": peer}
        finally:
            if peer.chat_gate is not None:
                peer.chat_gate.set()
            await client.close()
            await nc.close()


def assert_busy(exc: openai.RateLimitError) -> None:
    assert exc.status_code == 429 and exc.response.headers["retry-after"] == "1"
    body = exc.body
    assert isinstance(body, dict)
    assert body["code"] == "rate_limited" and body["type"] == "rate_limit_error" and body["param"] == "role"
    assert "'coding'" in body["message"] and "concurrency limit" in body["message"]


async def test_the_gateway_never_exceeds_a_backends_limit_and_frees_it_when_the_call_ends(fleet):
    client: openai.AsyncOpenAI = fleet["client"]
    peer: OllamaPeer = fleet["peer"]
    peer.chat_gate = threading.Event()
    stream = await client.chat.completions.create(model="coding", messages=ASK, stream=True)
    first = await anext(stream)  # the answer has begun; the peer holds the rest
    assert first.choices[0].delta.role == "assistant"
    chats = len(peer.chat_requests)

    # a 429 and nothing sent, whichever count refuses first: this gateway's own (exact, at once) or the router's
    # (from the gateway's busy report, which may or may not have reached it by now)
    with pytest.raises(openai.RateLimitError) as busy:
        await client.chat.completions.create(model="coding", messages=ASK)
    assert_busy(busy.value)
    message = busy.value.body["message"]  # type: ignore[index]
    assert "from this gateway" in message or f"{HOST} {peer.url} (1 of 1)" in message, message
    assert len(peer.chat_requests) == chats

    peer.chat_gate.set()
    text = (first.choices[0].delta.content or "") + "".join(
        [c.choices[0].delta.content or "" async for c in stream if c.choices]
    )
    assert text == "echo: hello there"
    done = await client.chat.completions.create(model="coding", messages=ASK)  # the call ended: room again
    assert done.choices[0].message.content == "echo: hello there"


async def test_the_router_answers_429_when_the_reported_in_flight_fills_every_backend(fleet):
    client: openai.AsyncOpenAI = fleet["client"]
    js = fleet["nc"].jetstream()
    peer: OllamaPeer = fleet["peer"]

    def report(n: int) -> BackendCallCompleted:  # another gateway's report: it has `n` calls open on the backend
        return BackendCallCompleted(
            producer="gateway", host_id=HOST, backend_url=peer.url, model=CODER, outcome="ok", latency_ms=5,
            gateway_instance="gateway-elsewhere", in_flight=n,
        )  # fmt: skip

    await publish(js, report(1))

    async def refused() -> openai.RateLimitError | None:
        try:
            await client.chat.completions.create(model="coding", messages=ASK)
        except openai.RateLimitError as exc:
            return exc
        return None

    busy = await eventually(refused, 20, "the router's 429")
    assert_busy(busy)
    assert f"{HOST} {peer.url} (1 of 1)" in busy.body["message"]  # type: ignore[index]
    async with httpx.AsyncClient(base_url=fleet["url"], timeout=30) as http:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        decided = await http.post("/api/v1/route", json={"role": "coding"}, headers=admin)
        assert decided.status_code == 429 and decided.json()["code"] == "rate_limited"
        backends = (await http.get("/api/v1/backends", headers=admin)).json()["backends"]
        assert [(b["host_id"], b["in_flight"], b["max_in_flight"]) for b in backends] == [(HOST, 1, 1)]

    await publish(js, report(0))  # that gateway's call ended
    done = await eventually(lambda: client.chat.completions.create(model="coding", messages=ASK), 20, "room again")
    assert done.choices[0].message.content == "echo: hello there"


async def test_a_client_that_leaves_mid_stream_cancels_the_backend_request_and_frees_its_slot(fleet):
    peer: OllamaPeer = fleet["peer"]
    client: openai.AsyncOpenAI = fleet["client"]
    reports = await fleet["nc"].subscribe(BackendCallsCompleted.SUBJECT)
    peer.chat_gate = threading.Event()  # the peer sends a first word, then holds the rest of the answer
    body = {"model": "coding", "messages": ASK, "stream": True}
    async with httpx.AsyncClient(timeout=30) as http, http.stream(
        "POST", f"{fleet['url']}/v1/chat/completions", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, json=body
    ) as r:  # fmt: skip
        assert r.status_code == 200
        lines = r.aiter_lines()
        first = await anext(lines)
        assert first.startswith("data: ") and '"role":"assistant"' in first
        assert peer.chat_streaming == 1
    # the client left (the response and its connection are closed) while the backend was mid-answer

    async def backend_saw_it() -> bool:
        return peer.chat_aborted == 1 and peer.chat_streaming == 0

    await eventually(backend_saw_it, 20, "the peer to see its request cancelled")
    report = BackendCallsCompleted.model_validate_json((await reports.next_msg(timeout=20)).data).calls[-1]
    assert report.host_id == HOST and report.in_flight == 0  # the gateway's count on the backend is back to 0
    done = await client.chat.completions.create(model="coding", messages=ASK)  # and its one slot is free again
    assert done.choices[0].message.content == "echo: hello there"

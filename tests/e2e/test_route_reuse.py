"""A gateway reuses a route reply the router offers for reuse (services/gateway/route_memo.py, docs/router.md "Route
reuse") and asks again once something may have changed the decision: real NATS and PostgreSQL, catalog, router and
gateway processes, the project's Ollama peer, the official `openai` client. A spy subscription on the route subject
counts the asks that cross the bus."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import nats
import openai
import pytest

from contracts.router import BackendChecked, LlmRecovered, RouteRequest
from contracts.vram import GIB
from tests.harness.cli import ADMIN_TOKEN
from tests.harness.fleet_events import gpu_sample, publish
from tests.harness.metrics import free_port, scrape_async
from tests.harness.waiting import eventually
from tests.peers.ollama_server import OllamaPeer
from tests.peers.otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.e2e

CODER = "qwen3-coder:30b"  # the default set's `coding` model (num_ctx 65536)
HOST = "h-reuse"
SPAN_KIND_SERVER = 2  # OTLP's Span.SpanKind
ASK = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


async def test_a_gateway_reuses_an_offered_route_until_something_may_have_changed_it(
    nats_url, database_url, service_env, start_service, start_gateway, otlp
):
    peer = OllamaPeer().start()
    peer.install(CODER)
    traced = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    env = service_env(database_url=database_url, MODELFLEET_ADMIN_TOKEN=ADMIN_TOKEN, **traced)
    await start_service("catalog", env)
    # reuse long enough that none ends by time while the test runs: what ends one here is a failure or an event
    await start_service("router", service_env(MODELFLEET_ROUTER_ROUTE_REUSE_MS="60000", **traced))
    metrics = free_port()
    url = await start_gateway(
        {**env, "MODELFLEET_GATEWAY_ROUTE_REUSE_MAX_S": "60", "MODELFLEET_METRICS_PORT": str(metrics)}
    )
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    spy = await nc.subscribe(RouteRequest.SUBJECT)  # a copy of every route ask made on the bus (answers none)
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=ADMIN_TOKEN, max_retries=0, timeout=30)

    async def asks(**kw: Any) -> int:
        """Route asks one chat completion made (the server's PONG comes after any copy of an ask it made)."""
        before = spy.delivered
        done = await client.chat.completions.create(model="coding", messages=ASK, **kw)
        assert done.choices[0].message.content == "echo: hello there"
        await nc.flush()
        return spy.delivered - before

    try:
        await publish(js, gpu_sample(HOST, peer.url, (CODER,), size_bytes=GIB, context_length=8192))
        await eventually(lambda: client.chat.completions.create(model="coding", messages=ASK), 30, "an answer")

        # the role's model loaded on one backend: the reply is reused, streamed or not, for the same request only
        assert [await asks() for _ in range(3)] == [0, 0, 0]
        # a traced one: no router span in its trace (no ask), and its server span says why
        trace_id = secrets.token_hex(16)
        assert await asks(extra_headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}) == 0
        server = await eventually(lambda: _server_span(otlp, trace_id), 20, "the traced request's server span")
        assert server.attribute("modelfleet.route.reused") is True
        assert not [s for s in otlp.snapshot() if s.trace_id == trace_id and s.service == "router"]
        before = spy.delivered
        stream = await client.chat.completions.create(model="coding", messages=ASK, stream=True)
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "echo: hello there"
        await nc.flush()
        assert spy.delivered == before
        assert [await asks(temperature=0.5), await asks(temperature=0.5), await asks()] == [1, 0, 0]

        # the control plane's route is always a fresh decision, and shows the offer
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
            decided = (await http.post("/api/v1/route", json={"role": "coding"})).json()
        await nc.flush()
        assert spy.delivered == before + 2  # the temperature 0.5 ask, then this one
        assert decided["reuse"] == {"ms": 60000, "max_prompt_tokens": 65536}

        # a failed call of the gateway's own: the next request asks again
        peer.chat_error = (500, "model runner crashed")
        with pytest.raises(openai.APIStatusError):
            await client.chat.completions.create(model="coding", messages=ASK)
        peer.chat_error = None
        assert [await asks(), await asks()] == [1, 0]

        # a router's event that can change a decision: a failed check, llm.recovered (published here as a router
        # would); the gateway reads it on core NATS, so the first chat after it may still come first
        for event in (
            BackendChecked(producer="router", event_id=uuid.uuid4(), host_id=HOST, backend_url=peer.url,
                           outcome="timeout", latency_ms=1000.0),
            LlmRecovered(producer="router", host_id=HOST, backend_url=peer.url, role="coding", hosts=[HOST]),
        ):  # fmt: skip
            await publish(js, event)
            await eventually(lambda: _asked_again(asks), 15, f"a route asked again after {event.SUBJECT}")
            assert await asks() == 0
        # the chats above that made no ask, at least
        scraped = await scrape_async(f"http://127.0.0.1:{metrics}/metrics")
        assert scraped.value("modelfleet_gateway_route_reuses_total") >= 9
    finally:
        peer.stop()
        await spy.unsubscribe()
        await client.close()
        await nc.close()


async def _server_span(otlp: OtlpReceiver, trace_id: str) -> ReceivedSpan | None:
    return next((s for s in otlp.snapshot() if s.trace_id == trace_id and s.kind == SPAN_KIND_SERVER), None)


async def _asked_again(asks: Any) -> bool:
    return bool(await asks() == 1)

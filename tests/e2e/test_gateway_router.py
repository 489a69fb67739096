"""The gateway with a router replica in its process (`python -m services.gateway_router`), no router process at all:
real NATS and PostgreSQL, the catalog, the project's Ollama peer, the official `openai` client. Once the replica
has caught up, no route ask crosses the bus; the replica still watches the role (degraded, 503, recovered)."""

from __future__ import annotations

from typing import Any

import nats
import openai
import pytest

from contracts.router import RouteRequest
from contracts.vram import GIB
from tests.harness.cli import ADMIN_TOKEN
from tests.harness.fleet_events import gpu_sample, publish, role_state, transitions
from tests.harness.waiting import eventually, until
from tests.peers.ollama_server import OllamaPeer

pytestmark = pytest.mark.e2e

CODER = "qwen3-coder:30b"  # the default set's `coding` model
HOST = "h-colocated"
ASK = [{"role": "user", "content": "hello there"}]


async def test_the_gateway_routes_in_process_and_its_replica_watches_the_role(
    nats_url, database_url, service_env, start_service, start_gateway
):
    peer = OllamaPeer().start()
    port = int(peer.url.rsplit(":", 1)[1])
    peer.install(CODER)
    env = service_env(database_url=database_url, MODELFLEET_ADMIN_TOKEN=ADMIN_TOKEN)
    await start_service("catalog", env)
    url = await start_gateway({**env, "MODELFLEET_ROUTER_COOLDOWN_S": "2"}, service="gateway-router")
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    spy = await nc.subscribe(RouteRequest.SUBJECT)  # a copy of every route ask made on the bus (answers none)
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=ADMIN_TOKEN, max_retries=0, timeout=30)
    try:
        await publish(js, gpu_sample(HOST, peer.url, (CODER,), size_bytes=GIB, context_length=8192))

        async def answered_without_a_bus_ask() -> bool:
            before = spy.delivered
            done = await client.chat.completions.create(model="coding", messages=ASK)
            await nc.flush()  # the server's PONG comes after any copy of an ask this request made
            return done.choices[0].message.content == "echo: hello there" and spy.delivered == before

        # until the replica has folded the sample and caught up (before that the gateway asks the bus: the same
        # replica answers there)
        await eventually(answered_without_a_bus_ask, 30, "a route decided in-process")
        before = spy.delivered
        for _ in range(3):
            done = await client.chat.completions.create(model="coding", messages=ASK)
            assert done.choices[0].message.content == "echo: hello there"
            stream = await client.chat.completions.create(model="coding", messages=ASK, stream=True)
            assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "echo: hello there"
        raw = await client.chat.completions.with_raw_response.create(model="coding", messages=ASK)
        assert raw.headers["x-modelfleet-backend"] == f"{HOST} {peer.url}"
        await nc.flush()
        assert spy.delivered == before, "a route ask crossed the bus after the replica caught up"

        await until(lambda: _is(nc, "coding", "healthy"), 15)  # the replica's watch has seen the role served
        peer.stop()  # the role's only backend: the replica in the gateway's process publishes llm.degraded
        await until(lambda: _is(nc, "coding", "degraded"), 10)
        with pytest.raises(openai.InternalServerError) as refused:
            await client.chat.completions.create(model="coding", messages=ASK)
        assert refused.value.status_code == 503
        assert refused.value.body["code"] == "no_backend" and "'coding'" in refused.value.body["message"]  # type: ignore[index]
        # the role's state flips as its event is published: read the stream until the event is there
        await eventually(lambda: _transitions_are(js, ["degraded"]), 10, "llm.degraded on the stream")

        peer = OllamaPeer(port=port).start()
        peer.install(CODER)
        await until(lambda: _is(nc, "coding", "healthy"), 15)
        done = await eventually(lambda: client.chat.completions.create(model="coding", messages=ASK), 15, "answers")
        assert done.choices[0].message.content == "echo: hello there"
        await eventually(lambda: _transitions_are(js, ["degraded", "recovered"]), 10, "llm.recovered on the stream")
        assert await transitions(js, "coding") == ["degraded", "recovered"]  # one event per transition, no more
    finally:
        peer.stop()
        await spy.unsubscribe()
        await client.close()
        await nc.close()


async def _is(nc: Any, role: str, state: str) -> bool:
    return await role_state(nc, role) == state


async def _transitions_are(js: Any, expected: list[str]) -> bool:
    return await transitions(js, "coding") == expected

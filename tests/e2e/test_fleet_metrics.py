"""After a few chat and embedding requests through the gateway, the gateway's and the router's /metrics (each on its
own port, scraped as Prometheus does) show the request path's series with non-zero values: HTTP requests by route and
status, gen_ai duration, time to first token, tokens in and out, tokens per second, the gateway's overhead, the
backend chosen and the route reason; the router's decisions, backends by circuit state, a circuit transition, the
watched roles, and the runtime's rpc and stream counters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats
import openai
import pytest

from contracts.hardware import GpuSampled
from contracts.vram import GIB
from tests.harness.cli import ADMIN_TOKEN
from tests.harness.fleet_events import gpu_sample, publish
from tests.harness.metrics import Samples, free_port, scrape_async
from tests.harness.waiting import eventually
from tests.peers.ollama_server import OllamaPeer

pytestmark = pytest.mark.e2e

CODER = "qwen3-coder:30b"  # the default set's `coding` model
GENERAL = "qwen3:30b-a3b"  # the default set's `general` model
EMBEDDER = "nomic-embed-text-v2-moe:latest"  # the default set's `embedding` model


def sample(host: str, url: str, loaded: tuple[str, ...]) -> GpuSampled:
    return gpu_sample(host, url, loaded, size_bytes=GIB, context_length=8192)


@pytest.fixture
async def fleet(nats_url, database_url, service_env, start_service, start_gateway) -> AsyncIterator[dict[str, Any]]:
    """Catalog, router and gateway; `b-live` serves every model, `a-dead` (sorted first) fails chats with a 500.
    The router trips a circuit on the first failure, so one failed chat is one transition."""
    ports = {"gateway": free_port(), "router": free_port()}
    env = service_env(database_url=database_url, MODELFLEET_ADMIN_TOKEN=ADMIN_TOKEN)
    await start_service("catalog", env)
    await start_service(
        "router", service_env(MODELFLEET_METRICS_PORT=str(ports["router"]), MODELFLEET_ROUTER_ALLOWED_FAILS="1")
    )
    # every request asks the router (no reused route, services/gateway/route_memo.py): its decisions are counted here
    gateway_env = {**env, "MODELFLEET_METRICS_PORT": str(ports["gateway"]), "MODELFLEET_GATEWAY_ROUTE_REUSE_MAX_S": "0"}
    url = await start_gateway(gateway_env)
    live, dead = OllamaPeer().start(), OllamaPeer().start()
    for name in (CODER, GENERAL, EMBEDDER):
        live.install(name)
    dead.install(GENERAL)
    dead.chat_error = (500, "model runner crashed")
    nc = await nats.connect(nats_url)
    await publish(
        nc.jetstream(), sample("a-dead", dead.url, (GENERAL,)), sample("b-live", live.url, (CODER, GENERAL, EMBEDDER))
    )
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=ADMIN_TOKEN, max_retries=0, timeout=30)
    try:
        yield {
            "client": client,
            "url": url,
            "gateway": f"http://127.0.0.1:{ports['gateway']}/metrics",
            "router": f"http://127.0.0.1:{ports['router']}/metrics",
        }
    finally:
        await client.close()
        await nc.close()
        live.stop()
        dead.stop()


async def until_in_the_view(url: str) -> None:
    """The router folds the samples asynchronously: wait until its view holds both backends, healthy. Asked through
    GET /api/v1/backends, not with a chat: a 503 while waiting would be counted by the series under test."""

    async def both() -> bool | None:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            got = (await http.get("/api/v1/backends", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})).json()
        return {b["host_id"] for b in got["backends"] if b["healthy"]} >= {"a-dead", "b-live"} or None

    await eventually(both, 20, "both backends in the router's view")


async def test_gateway_and_router_metrics_after_a_few_requests(fleet):
    client: openai.AsyncOpenAI = fleet["client"]
    await until_in_the_view(fleet["url"])
    done = await client.chat.completions.create(
        model="coding", messages=[{"role": "user", "content": "write hello world"}]
    )
    assert done.usage is not None and done.usage.completion_tokens > 0
    stream = await client.chat.completions.create(
        model="coding", messages=[{"role": "user", "content": "one two three"}], stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    assert [c async for c in stream]
    await client.chat.completions.create(model="general", messages=[{"role": "user", "content": "hi"}])  # a-dead fails
    await client.embeddings.create(model="embedding", input=["a vector, please"])
    with pytest.raises(openai.InternalServerError):  # a model name nothing serves: 503
        await client.chat.completions.create(model="no-such-role-or-model", messages=[{"role": "user", "content": "x"}])

    gw = await scrape_async(fleet["gateway"])
    chat = {"http_route": "/v1/chat/completions", "http_request_method": "POST"}
    assert gw.value("http_server_request_duration_seconds_count", **chat, http_response_status_code="200") == 3
    assert gw.value("http_server_request_duration_seconds_count", **chat, http_response_status_code="503") == 1
    assert not gw.find("http_server_duration_milliseconds_count")  # one HTTP histogram: no double counting
    coding = {"gen_ai_operation_name": "chat", "modelfleet_role": "coding"}
    assert gw.value("gen_ai_server_request_duration_seconds_count", **coding, http_response_status_code="200") == 2
    assert gw.value("gen_ai_server_request_duration_seconds_sum", **coding) > 0
    assert gw.value("gen_ai_server_request_duration_seconds_count", gen_ai_operation_name="embeddings") == 1
    ttft = gw.find("gen_ai_server_time_to_first_token_seconds_count", **coding, gen_ai_provider_name="ollama")
    assert sum(s.value for s in ttft) == 1  # the one streamed chat
    assert gw.value("gen_ai_client_token_usage_sum", **coding, gen_ai_token_type="input") > 0
    assert gw.value("gen_ai_client_token_usage_sum", **coding, gen_ai_token_type="output") > 0
    assert (
        gw.value(
            "gen_ai_client_token_usage_sum",
            gen_ai_operation_name="embeddings",
            gen_ai_token_type="input",
            gen_ai_provider_name="ollama",
        )
        > 0
    )
    assert gw.value("modelfleet_gateway_output_tokens_per_second_sum", **coding) > 0
    assert gw.value("modelfleet_gateway_overhead_seconds_count", **coding) == 2
    live = {"modelfleet_backend_host": "b-live", "modelfleet_backend_kind": "ollama"}
    assert (
        gw.value("modelfleet_gateway_backend_selections_total", **live, modelfleet_route_reason="loaded/least_busy")
        == 4
    )
    assert (
        gw.value(
            "modelfleet_gateway_backend_selections_total", modelfleet_role="general", modelfleet_route_retried="true"
        )
        == 1
    )

    async def router_settled() -> Samples | None:
        got = await scrape_async(fleet["router"])
        healthy = got.value("modelfleet_router_roles", modelfleet_role_state="healthy")
        return got if healthy >= 1 and got.value("modelfleet_router_circuit_transitions_total") >= 1 else None

    rt = await eventually(router_settled, 20, "the router's roles watched and a circuit transition folded")
    decided = {"modelfleet_route_strategy": "least_busy", "modelfleet_route_outcome": "routed"}
    assert rt.value("modelfleet_router_decisions_total", **decided, modelfleet_route_tier="loaded") == 4
    opened = rt.value(
        "modelfleet_router_circuit_transitions_total", modelfleet_circuit_from="closed", modelfleet_circuit_to="open"
    )
    assert opened >= 1  # a-dead's failed chat
    assert rt.value("modelfleet_router_backends", modelfleet_backend_kind="ollama") == 2
    assert rt.find("modelfleet_router_role_degraded", modelfleet_role="coding")[0].value == 0
    refused = {"modelfleet_route_outcome": "no_backend", "modelfleet_route_tier": "none"}
    assert rt.value("modelfleet_router_decisions_total", **refused) == 1
    assert rt.value("modelfleet_rpc_requests_total", rpc_subject="rpc.router.route.v1", rpc_outcome="ok") == 4
    assert (
        rt.value(
            "modelfleet_messages_consumed_total", messaging_destination_name="evt.gateway.backend.calls.completed.v1"
        )
        >= 1
    )

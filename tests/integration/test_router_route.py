"""rpc.router.route.v1 with real NATS, a real catalog and router processes: events in, the same route from every
replica, typed errors out."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import nats
import pytest

from contracts.hardware import GpuSampled
from contracts.provisioner import ModelPulled
from contracts.router import BackendBusy, BackendCallCompleted, RouteRequest
from contracts.vram import GIB
from tests.harness.catalog import healthy_instances
from tests.harness.fleet_events import gpu_sample, publish, route

pytestmark = pytest.mark.integration
#: The hosts here are names that resolve nowhere: active checks (tests/integration/test_router_health.py) would cool
#: every backend down, so they run once a day.
NO_CHECKS = {"MODELFLEET_ROUTER_CHECK_INTERVAL_S": "86400"}


def sample(host: str, loaded: tuple[str, ...] = ()) -> GpuSampled:
    return gpu_sample(host, f"http://{host}.test:11434", loaded, context_length=40960)


async def route_until(nc: Any, want: Any, timeout_s: float = 20.0, **body: Any) -> dict[str, Any]:
    """Ask until the reply satisfies `want` (the routers fold events asynchronously); bounded."""
    deadline = time.monotonic() + timeout_s
    got: dict[str, Any] = {}
    while time.monotonic() < deadline:
        got = await route(nc, **body)
        if want(got):
            return got
        await asyncio.sleep(0.1)
    raise AssertionError(f"no matching route within {timeout_s}s; last: {got}")


async def wait_replicas(nc: Any, n: int, timeout_s: float = 30.0) -> None:
    """Until `n` router instances answer their health subject (a second replica's start returns as soon as the
    first one answers, so the harness cannot tell by itself)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(await healthy_instances(nc, "router")) >= n:
            return
    raise AssertionError(f"fewer than {n} router replicas became healthy within {timeout_s}s")


def on_host(host: str) -> Any:
    return lambda r: r.get("host_id") == host


async def test_events_steer_the_route_and_every_replica_decides_the_same(
    nats_url, database_url, service_env, start_service
):
    env = service_env(database_url=database_url)
    await start_service("catalog", env)
    router_env = service_env(MODELFLEET_ROUTER_COOLDOWN_S="30", **NO_CHECKS)
    replicas = [await start_service("router", router_env), await start_service("router", router_env)]
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        await wait_replicas(nc, 2)
        # `general` resolves to qwen3:30b-a3b (num_ctx 40960), with qwen3:14b in its fallback chain
        await publish(
            js,
            sample("h1", loaded=("qwen3:30b-a3b",)),
            sample("h2"),
            sample("h3", loaded=("qwen3:14b",)),
            ModelPulled(producer="provisioner", request_id=uuid.uuid4(), target_host="h2", model="qwen3:30b-a3b",
                        size_bytes=18 * GIB),
        )  # fmt: skip
        first = await route_until(nc, on_host("h1"), role="general", options={"temperature": 1.5})
        assert first["backend"] == {"host_id": "h1", "kind": "ollama", "base_url": "http://h1.test:11434",
                                    "max_in_flight": 64}  # fmt: skip
        assert first["backend_url"] == "http://h1.test:11434" and first["model_ref"] == "qwen3:30b-a3b"
        assert (first["model_name"], first["provider"], first["role"]) == ("qwen3:30b-a3b", "ollama", "general")
        assert first["options"]["num_ctx"] == 40960 and first["options"]["temperature"] == 1.5
        assert first["reason"]["tier"] == "loaded" and first["reason"]["strategy"] == "least_busy"
        assert first["fallback"] is False and first["system_prompt"]
        chain = [(c["backend"]["host_id"], c["model_name"]) for c in first["fallback_chain"]]
        assert chain[:2] == [("h2", "qwen3:30b-a3b"), ("h3", "qwen3:14b")]

        # every replica answers the same: ask through the queue group, then each replica alone, one of them
        # restarted so that its view is rebuilt from the streams alone
        same = [await route(nc, role="general") for _ in range(10)]
        assert {json.dumps(r, sort_keys=True) for r in same} == {json.dumps(same[0], sort_keys=True)}
        replicas[0].stop()
        alone = await route(nc, role="general")
        replicas[0] = await start_service("router", router_env)
        await wait_replicas(nc, 2)
        replicas[1].stop()
        rebuilt = await route_until(nc, on_host("h1"), role="general")
        assert rebuilt == alone == same[0]

        # the gateway reports h1 refusing connections: its circuit opens and the installed copy on h2 serves
        await publish(js, BackendCallCompleted(
            producer="gateway", host_id="h1", backend_url="http://h1.test:11434", model="qwen3:30b-a3b",
            outcome="connect_refused", latency_ms=1.0, gateway_instance="gw-test", in_flight=0,
        ))  # fmt: skip
        moved = await route_until(nc, on_host("h2"), role="general")
        assert moved["reason"]["tier"] == "fits" and moved["model_name"] == "qwen3:30b-a3b"
        assert [c["backend"]["host_id"] for c in moved["fallback_chain"]] == ["h3"]

        # nothing serves `coding`: a 503 naming the role; an unknown role is the catalog's own 404
        none = await route(nc, role="coding")
        assert none["error"]["status"] == 503 and none["error"]["code"] == "no_backend"
        assert "coding" in none["error"]["detail"] and none["error"]["field"] == "role"
        unknown = await route(nc, role="astrology")
        assert (unknown["error"]["status"], unknown["error"]["field"]) == (404, "role")
        bad = await route(nc, role="general", options={"top_p": 3})
        assert bad["error"]["status"] == 422 and bad["error"]["field"] == "options.top_p"
        both = await nc.request(RouteRequest.SUBJECT, b'{"role": "general", "model": "x"}', timeout=10)
        assert json.loads(both.data)["error"]["code"] == "invalid_request"
    finally:
        await nc.close()


async def test_a_model_by_name_and_its_fallback(nats_url, database_url, service_env, start_service):
    """A model asked by name that no host serves routes to its fallback model (flagged `fallback`)."""
    await start_service("catalog", service_env(database_url=database_url))
    await start_service("router", service_env(**NO_CHECKS))
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        await publish(js, sample("h3", loaded=("qwen3:14b",)))
        got = await route_until(nc, on_host("h3"), role="general")
        assert got["fallback"] is True and got["model_ref"] == "qwen3:14b" and got["model_name"] == "qwen3:14b"
        assert "fallback" in got["reason"]["detail"]
        direct = await route(nc, model="qwen3:14b", required_context=100_000)
        assert direct["fallback"] is False and direct["options"]["num_ctx"] == 100_000
    finally:
        await nc.close()


async def test_a_reply_is_offered_for_reuse_only_where_no_other_backend_competes(
    nats_url, database_url, service_env, start_service
):
    """`RouteReply.reuse` (docs/router.md "Route reuse"): the model loaded on one usable backend, at most half its
    limit, at a num_ctx the prompt did not raise; not when a second backend has it, when the backend is busy, when
    the prompt raises num_ctx, nor for a model only installed."""
    await start_service("catalog", service_env(database_url=database_url))
    await start_service("router", service_env(**NO_CHECKS))
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    h1 = "http://h1.test:11434"
    offered = {"ms": 500, "max_prompt_tokens": 40960}  # the default reuse; `general`'s num_ctx
    try:
        await publish(js, sample("h1", loaded=("qwen3:30b-a3b",)), sample("h3"))
        got = await route_until(nc, on_host("h1"), role="general", prompt_tokens=1000)
        assert got["reuse"] == offered and got["reason"]["tier"] == "loaded"
        assert (await route(nc, role="general", prompt_tokens=40960))["reuse"] == offered
        raised = await route(nc, role="general", prompt_tokens=50_000)  # num_ctx follows the prompt: not reusable
        assert raised["options"]["num_ctx"] == 50_000 and raised["reuse"] is None

        def busy(n: int) -> BackendBusy:
            return BackendBusy(
                producer="gateway", host_id="h1", backend_url=h1, gateway_instance="gw-test", in_flight=n
            )

        await publish(js, busy(33))  # of 64: over half
        await route_until(nc, lambda r: r.get("host_id") == "h1" and r.get("reuse") is None, role="general")
        await publish(js, busy(32))
        await route_until(nc, lambda r: r.get("reuse") == offered, role="general")

        # a second backend has it loaded: the strategy orders the two, the reply is not reusable
        await publish(js, sample("h2", loaded=("qwen3:30b-a3b",)))
        two = await route_until(
            nc, lambda r: "h2" in {c["backend"]["host_id"] for c in r.get("fallback_chain", [])} or
            r.get("host_id") == "h2", role="general",
        )  # fmt: skip
        assert two["reuse"] is None

        # installed only (a pull on h3): tier `fits`, not reusable
        await publish(js, ModelPulled(producer="provisioner", request_id=uuid.uuid4(), target_host="h3",
                                      model="qwen3-coder:30b", size_bytes=18 * GIB))  # fmt: skip
        coding = await route_until(nc, on_host("h3"), role="coding")
        assert coding["reason"]["tier"] in ("fits", "installed") and coding["reuse"] is None
    finally:
        await nc.close()

"""Active checks and role transitions with real NATS, a catalog, two router replicas and the Ollama peer as the
backend: one llm.degraded when it stops, one llm.recovered when it answers again; 429 and refusals cool down."""

from __future__ import annotations

import asyncio
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread
from typing import Any

import nats
import pytest

from tests.harness.catalog import healthy_instances
from tests.harness.fleet_events import gpu_sample, publish, role_state, route, transitions
from tests.harness.waiting import until
from tests.peers.ollama_server import OllamaPeer

pytestmark = pytest.mark.integration


async def test_one_degraded_then_one_recovered_across_two_replicas(nats_url, database_url, service_env, start_service):
    peer = OllamaPeer().start()
    port = int(peer.url.rsplit(":", 1)[1])
    await start_service("catalog", service_env(database_url=database_url))
    # A cooldown longer than the check interval (2 s): each failed check reopens the circuit before it can go
    # half-open, so the route asked below is refused (with 2 s, a route asked in the moment between the cooldown's
    # end and the next failed check's fold went to the half-open backend, as a trial call should).
    env = service_env(MODELFLEET_ROUTER_COOLDOWN_S="5")
    await start_service("router", env)
    await start_service("router", env)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        await until(lambda: _n(nc, 2), 30)
        await publish(js, gpu_sample("h1", peer.url, ["qwen3-coder:30b"]))
        await until(lambda: _is(nc, "coding", "healthy"), 30)
        peer.stop()
        took = await until(lambda: _is(nc, "coding", "degraded"), 10)
        print(f"degraded seen {took:.2f}s after the backend stopped")
        await asyncio.sleep(3)  # both replicas keep evaluating: still one event
        assert await transitions(js, "coding") == ["degraded"]
        refused = await route(nc, role="coding")
        assert refused.get("error", {}).get("code") == "no_backend", refused
        peer = OllamaPeer(port=port).start()
        took = await until(lambda: _is(nc, "coding", "healthy"), 15)
        print(f"recovered seen {took:.2f}s after the backend restarted")
        await asyncio.sleep(3)
        assert await transitions(js, "coding") == ["degraded", "recovered"]
        assert (await route(nc, role="coding"))["backend"]["host_id"] == "h1"
    finally:
        peer.stop()
        await nc.close()


class _Status(BaseHTTPRequestHandler):
    status = 429

    def do_GET(self) -> None:
        self.send_response(type(self).status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


async def test_429_and_refusing_backends_are_skipped_during_the_cooldown(
    nats_url, database_url, service_env, start_service
):
    handler = type("Limited", (_Status,), {"status": 429})
    limited = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    Thread(target=limited.serve_forever, daemon=True).start()
    peer = OllamaPeer().start()
    await start_service("catalog", service_env(database_url=database_url))
    await start_service("router", service_env(MODELFLEET_ROUTER_COOLDOWN_S="3"))
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        # ties go by backend id: "a-…" and "b-…" would be chosen before "c-ok" while healthy
        coder = ["qwen3-coder:30b"]
        limited_url = f"http://127.0.0.1:{limited.server_address[1]}"
        await publish(js, gpu_sample("a-429", limited_url, coder), gpu_sample("b-refused", "http://127.0.0.1:9", coder),
                      gpu_sample("c-ok", peer.url, coder))  # fmt: skip

        async def on(host: str) -> bool:
            got = await route(nc, role="coding")
            return bool(got.get("backend") and got["backend"]["host_id"] == host)

        await until(lambda: on("c-ok"), 15)
        for _ in range(10):  # held for several cooldowns: every check trips them again
            assert await on("c-ok")
            await asyncio.sleep(0.5)
        handler.status = 200  # the rate limit lifts: back after the cooldown and a successful check
        await until(lambda: on("a-429"), 15)
    finally:
        limited.shutdown()
        peer.stop()
        await nc.close()


async def _n(nc: Any, n: int) -> bool:
    return len(await healthy_instances(nc, "router")) >= n


async def _is(nc: Any, role: str, state: str) -> bool:
    try:
        return await role_state(nc, role) == state
    except Exception:
        return False

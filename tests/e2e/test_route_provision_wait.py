"""`POST /api/v1/route` waits for an on-demand pull as `/v1/` does: the gateway sends its own `provision_wait_s`
(`MODELFLEET_GATEWAY_PROVISION_WAIT_S`) and grows the route ask's timeout by as much, so a role whose model is
installed nowhere gets the router's 503 naming the pull under way after the gateway's bound (not the router's 60 s,
which outlasted the ask: a 504), and the route once the pull is done. Catalog, provisioner, router and gateway
processes, the project's Ollama peer as the host's Ollama and its registry."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats
import pytest

from contracts.vram import GIB
from tests.harness.cli import ADMIN_TOKEN
from tests.harness.fleet_events import gpu_sample, publish
from tests.harness.provision_bus import MIB, provisioner_env
from tests.harness.waiting import eventually
from tests.peers.ollama_server import OllamaPeer, library_model

pytestmark = pytest.mark.e2e

GENERAL = "qwen3:30b-a3b"  # the default set's `general` model
EMBEDDER = "nomic-embed-text-v2-moe:latest"  # the default set's `embedding` model
HOST = "gpu-1"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def fleet(
    nats_url, database_url, service_env, start_service, start_gateway, tmp_path
) -> AsyncIterator[dict[str, Any]]:
    """One GPU host whose Ollama has only the embedder; its registry serves `general`'s model, whose pull holds
    until the test opens `pull_gate`. The gateway waits 2 s for a pull and 20 s for any bus ask."""
    with OllamaPeer(library=[library_model(GENERAL, 2 * MIB)]) as peer:
        peer.install(EMBEDDER)
        gate = peer.pull_gate = threading.Event()
        env = service_env(database_url=database_url, MODELFLEET_ADMIN_TOKEN=ADMIN_TOKEN)
        await start_service("catalog", env)
        await start_service("provisioner", provisioner_env(service_env, database_url, tmp_path, "http://127.0.0.1:9",
                                                           {HOST: peer.url}))  # fmt: skip
        await start_service("router", service_env())
        url = await start_gateway({**env, "MODELFLEET_GATEWAY_PROVISION_WAIT_S": "2",
                                   "MODELFLEET_GATEWAY_REQUEST_TIMEOUT_S": "20"})  # fmt: skip
        nc = await nats.connect(nats_url)
        await publish(nc.jetstream(), gpu_sample(HOST, peer.url, (EMBEDDER,), size_bytes=GIB, context_length=8192))
        async with httpx.AsyncClient(base_url=url, headers=ADMIN, timeout=60) as http:
            try:

                async def embedder_routed() -> bool:  # the router folds the sample asynchronously
                    return (await http.post("/api/v1/route", json={"role": "embedding"})).status_code == 200

                await eventually(embedder_routed, 20, "the first route")
                yield {"http": http, "peer": peer, "gate": gate}
            finally:
                gate.set()
                await nc.close()


async def test_route_waits_the_gateways_bound_then_answers_once_pulled(fleet):
    http: httpx.AsyncClient = fleet["http"]
    peer: OllamaPeer = fleet["peer"]

    # the pull is held: past the gateway's 2 s the router answers 503 naming the pull (before the ask's 22 s)
    held = await http.post("/api/v1/route", json={"role": "general"})
    assert held.status_code == 503, held.text
    assert held.json()["code"] == "no_backend"
    detail = held.json()["detail"]
    for part in ("'general'", GENERAL, HOST, "under way", "not ready within 2 s"):
        assert part in detail, detail

    # a route asked while the pull is held is answered with the model once it is pulled
    waiting = asyncio.create_task(http.post("/api/v1/route", json={"role": "general"}))
    await eventually(lambda: asyncio.sleep(0, peer.calls["POST /api/pull"] >= 1), 30, "the provisioner's pull")
    fleet["gate"].set()

    first = await waiting

    async def routed() -> httpx.Response | None:
        again = await http.post("/api/v1/route", json={"role": "general"})
        return again if again.status_code == 200 else None

    done = first if first.status_code == 200 else await eventually(routed, 30, "general routed")
    body = done.json()
    assert body["model_name"] == GENERAL and body["host_id"] == HOST, body
    assert peer.calls["POST /api/pull"] == 1

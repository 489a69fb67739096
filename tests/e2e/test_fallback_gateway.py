"""The fallback in the chain, end to end: catalog, router, gateway and inference-fallback processes, real NATS and
PostgreSQL, the project's Ollama peer as the role's only backend, the official `openai` client. The backend stops:
the role is degraded, the fallback's slot (a tiny Llama checkpoint, real torch) answers, stream and not; the backend
returns: the role recovers, traffic goes back to it and the idle slot is evicted."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import nats
import openai
import pytest

from contracts.fallback import SlotEvicted, SlotLoaded
from contracts.router import LlmDegraded, LlmRecovered
from contracts.vram import GIB
from tests.harness.cli import ADMIN_TOKEN, run_cli
from tests.harness.fleet_events import gpu_sample, publish
from tests.harness.tiny_llama import build_tiny_llama
from tests.harness.waiting import eventually
from tests.peers.ollama_server import OllamaPeer

pytestmark = pytest.mark.e2e

CODER = "qwen3-coder:30b"


class Events:
    """Every message of a few subjects, in arrival order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    async def record(self, msg: Any) -> None:
        self.seen.append((msg.subject, json.loads(msg.data)))

    def of(self, subject: str) -> list[dict[str, Any]]:
        return [body for s, body in self.seen if s == subject]

    def order(self, *subjects: str) -> list[str]:
        return [s for s, _ in self.seen if s in subjects]


@pytest.fixture
async def fleet(
    nats_url, database_url, service_env, start_service, start_gateway, tmp_path: Path
) -> AsyncIterator[dict[str, Any]]:
    tiny = build_tiny_llama(tmp_path / "tiny-llama")
    peer = OllamaPeer().start()  # the test stops it (a second stop is harmless)
    peer.install(CODER)
    env = service_env(database_url=database_url, MODELFLEET_ADMIN_TOKEN=ADMIN_TOKEN)
    await start_service("catalog", env)
    await start_service("router", service_env(
        MODELFLEET_ROUTER_CHECK_INTERVAL_S="0.3", MODELFLEET_ROUTER_CHECK_TIMEOUT_S="1",
        MODELFLEET_ROUTER_COOLDOWN_S="1",
    ))  # fmt: skip
    await start_service("inference-fallback", service_env(
        MODELFLEET_FALLBACK_ADVERTISE_INTERVAL_S="0.5", MODELFLEET_FALLBACK_IDLE_EXPIRY_S="1",
        MODELFLEET_FALLBACK_EXPIRY_CHECK_S="0.3", MODELFLEET_FALLBACK_MEMORY_BUDGET_BYTES=str(4 * GIB),
    ))  # fmt: skip
    url = await start_gateway(env)
    nc = await nats.connect(nats_url)
    events = Events()
    for subject in (LlmDegraded.SUBJECT, LlmRecovered.SUBJECT, SlotLoaded.SUBJECT, SlotEvicted.SUBJECT):
        await nc.subscribe(subject, cb=events.record)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    manifest = {"profiles": {"default": {"models": {"coding": {"name": CODER, "fallback": {"path": str(tiny)}}}}}}
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        imported = await http.post("/api/v1/catalog/import", params={"filename": "llm.json"},
                                   content=json.dumps(manifest).encode(), headers=admin)  # fmt: skip
        assert imported.status_code == 200, imported.text
    await publish(nc.jetstream(), gpu_sample("gpu-01", peer.url, (CODER,), size_bytes=GIB, context_length=8192))
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=ADMIN_TOKEN, max_retries=0, timeout=60)
    try:
        yield {"url": url, "client": client, "peer": peer, "events": events, "tiny": tiny}
    finally:
        await client.close()
        await nc.close()
        peer.stop()


async def chat(client: openai.AsyncOpenAI, **kw: Any) -> Any:
    return await client.chat.completions.with_raw_response.create(
        model="coding", messages=[{"role": "user", "content": "write hello world"}], max_tokens=6, **kw
    )


async def served_by(client: openai.AsyncOpenAI, backend: str) -> bool:
    try:
        return bool((await chat(client)).headers["x-modelfleet-backend"] == backend)
    except openai.APIStatusError:
        return False


def arrived(events: Events, subject: str) -> Any:
    async def check() -> list[dict[str, Any]]:
        return events.of(subject)

    return check


async def test_a_role_whose_backend_is_down_is_answered_by_the_fallback_slot_and_goes_back(fleet) -> None:
    client: openai.AsyncOpenAI = fleet["client"]
    peer: OllamaPeer = fleet["peer"]
    events: Events = fleet["events"]
    live = f"gpu-01 {peer.url}"
    await eventually(lambda: served_by(client, live), 30, "the role served by its backend")

    # the route names the fallback's source, and ends its chain in the fallback while the backend is up
    async with httpx.AsyncClient(base_url=fleet["url"], timeout=30) as http:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

        async def route() -> dict[str, Any]:
            return dict((await http.post("/api/v1/route", json={"role": "coding"}, headers=headers)).json())

        async def with_source() -> dict[str, Any] | None:
            got = await route()
            return got if got.get("fallback_source") else None

        routed = await eventually(with_source, 20, "a route naming the fallback's source")
        assert routed["fallback_source"] == f"path {fleet['tiny']}"
        assert routed["fallback_chain"][-1]["backend"]["kind"] == "fallback"

        peer.stop()  # the role's only backend goes away
        await eventually(arrived(events, LlmDegraded.SUBJECT), 15, "llm.degraded")
        assert events.of(LlmDegraded.SUBJECT)[0]["role"] == "coding"
        # the degraded event warms the slot before any request needs it
        loaded = await eventually(arrived(events, SlotLoaded.SUBJECT), 60, "slot.loaded")
        assert loaded[0]["key"] == "coding" and loaded[0]["memory_bytes"] > 0

        raw = await chat(client)
        done = raw.parse()
        assert raw.headers["x-modelfleet-backend"].startswith("fallback test-host coding")
        assert raw.headers["x-modelfleet-route-reason"].startswith("fallback/fallback")
        assert done.model == "coding" and done.choices[0].finish_reason in ("stop", "length")
        assert done.usage is not None and 0 < done.usage.completion_tokens <= 6 and done.usage.prompt_tokens > 0
        assert "x_modelfleet_backend" not in raw.text  # the gateway's own label never reaches the client

        stream = await client.chat.completions.create(
            model="coding", messages=[{"role": "user", "content": "count"}], max_tokens=5, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = [c async for c in stream]
        assert chunks[0].choices[0].delta.role == "assistant"
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
        assert {c.model for c in chunks} == {"coding"}

        async def ready_replica() -> dict[str, Any] | None:  # the replica's advertisement reaches the routers
            [replica] = (await http.get("/api/v1/backends", headers=headers)).json()["fallbacks"]
            return replica if [(s["key"], s["state"]) for s in replica["slots"]] == [("coding", "ready")] else None

        replica = await eventually(ready_replica, 10, "the ready slot listed in /api/v1/backends")
        assert replica["host_id"] == "test-host" and replica["sources"]["coding"] == f"path {fleet['tiny']}"
        shown = await run_cli(fleet["url"], "backends")  # the operator's view: the slot is listed
        assert shown.returncode == 0, shown.stderr
        assert "fallback slots" in shown.stdout and "coding" in shown.stdout and "ready" in shown.stdout
        routed = await run_cli(fleet["url"], "route", "--role", "coding", "--json")
        assert routed.returncode == 0, routed.stderr
        assert json.loads(routed.stdout)["fallback_source"] == f"path {fleet['tiny']}"

    # the backend returns on its port: the role recovers, traffic goes back, the idle slot is evicted
    port = int(peer.url.rsplit(":", 1)[1])
    back = OllamaPeer(port=port).start()
    back.install(CODER)
    try:
        await eventually(arrived(events, LlmRecovered.SUBJECT), 20, "llm.recovered")
        await eventually(lambda: served_by(client, live), 20, "the role served by its backend again")
        evicted = await eventually(arrived(events, SlotEvicted.SUBJECT), 20, "slot.evicted")
        assert evicted[0]["key"] == "coding"
        assert events.order(LlmDegraded.SUBJECT, LlmRecovered.SUBJECT)[:2] == [
            LlmDegraded.SUBJECT,
            LlmRecovered.SUBJECT,
        ]
    finally:
        back.stop()

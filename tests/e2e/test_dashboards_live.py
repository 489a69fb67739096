"""Every metric the Grafana dashboards and the alert rules read is one a running fleet exposes.

A fleet of real processes (catalog, router, provisioner, hardware probe on two stand-in GPUs, inference fallback,
gateway), each serving `/metrics` on its own port, with the Ollama peer as the host's Ollama, does what an operator's
fleet does in its first minutes: answers chat requests (streamed and not), provisions a model, dead-letters a
malformed event, loses its backend (the role degrades, the fallback's slot answers), gets it back (the role recovers,
the idle slot is evicted). Then every `/metrics` is scraped, and each metric name in observability/grafana and
observability/alerts.yml must be among the series scraped (or one Prometheus makes itself, such as `up`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import nats
import openai
import pytest

from contracts.hardware import GpuSampled
from services.runtime.metrics import METRICS_PORTS
from tests.harness.cli import ADMIN_TOKEN
from tests.harness.metrics import Samples, free_port, scrape_async
from tests.harness.promql import PROMETHEUS_OWN, alert_exprs, dashboard_exprs, metric_names
from tests.harness.provision_bus import provisioner_env
from tests.harness.tiny_llama import build_tiny_llama
from tests.harness.two_gpus import two_gpus_env
from tests.harness.waiting import eventually
from tests.peers.ollama_server import OllamaPeer, library_model

pytestmark = pytest.mark.e2e

CODER = "qwen3-coder:30b"
PULLED = "qwen3:0.6b"


async def chat(client: openai.AsyncOpenAI) -> Any:
    return await client.chat.completions.with_raw_response.create(
        model="coding", messages=[{"role": "user", "content": "write hello world"}], max_tokens=6
    )


async def served_by(client: openai.AsyncOpenAI, prefix: str) -> bool:
    try:
        return bool((await chat(client)).headers["x-modelfleet-backend"].startswith(prefix))
    except openai.APIStatusError:
        return False


async def stream(client: openai.AsyncOpenAI) -> None:
    chunks = await client.chat.completions.create(
        model="coding", messages=[{"role": "user", "content": "count"}], max_tokens=4, stream=True
    )
    assert [c async for c in chunks]


async def test_every_metric_the_dashboards_and_alerts_read_is_exposed_by_a_running_fleet(
    nats_url: str, database_url: str, service_env: Any, start_service: Any, start_gateway: Any, bus: Any, tmp_path: Path
) -> None:
    ports = {service: free_port() for service in METRICS_PORTS}

    def env(service: str, **extra: str) -> dict[str, str]:
        return {**extra, "MODELFLEET_METRICS_PORT": str(ports[service])}

    async def scrape_all() -> Samples:
        every = Samples()
        for p in ports.values():
            every.extend(await scrape_async(f"http://127.0.0.1:{p}/metrics"))
        return every

    tiny = build_tiny_llama(tmp_path / "tiny-llama")
    peer = OllamaPeer(library=[library_model(PULLED, 4 << 20)]).start()
    peer.install(CODER)
    port = int(peer.url.rsplit(":", 1)[1])
    back: OllamaPeer | None = None
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        await start_service("catalog", service_env(database_url, **env("catalog", MODELFLEET_ADMIN_TOKEN=ADMIN_TOKEN)))
        await start_service("router", service_env(**env(
            "router", MODELFLEET_ROUTER_CHECK_INTERVAL_S="0.3", MODELFLEET_ROUTER_CHECK_TIMEOUT_S="1",
            MODELFLEET_ROUTER_COOLDOWN_S="1",
        )))  # fmt: skip
        await start_service("hardware-probe", service_env(**env(
            "hardware-probe", MODELFLEET_PROBE_INTERVAL_S="0.3", MODELFLEET_OLLAMA_URL=peer.url, **two_gpus_env()
        )))  # fmt: skip
        await start_service("inference-fallback", service_env(**env(
            "inference-fallback", MODELFLEET_FALLBACK_ADVERTISE_INTERVAL_S="0.5",
            MODELFLEET_FALLBACK_IDLE_EXPIRY_S="1", MODELFLEET_FALLBACK_EXPIRY_CHECK_S="0.3",
        )))  # fmt: skip
        hub_unused = "http://127.0.0.1:9"  # nothing here pulls from a hub
        await start_service("provisioner", provisioner_env(
            service_env, database_url, tmp_path, hub_unused, {"test-host": peer.url}, **env("provisioner")
        ))  # fmt: skip
        url = await start_gateway(service_env(database_url, **env("gateway", MODELFLEET_ADMIN_TOKEN=ADMIN_TOKEN)))

        manifest = {"profiles": {"default": {"models": {"coding": {"name": CODER, "fallback": {"path": str(tiny)}}}}}}
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            imported = await http.post("/api/v1/catalog/import", params={"filename": "llm.json"},
                                       content=json.dumps(manifest).encode(), headers=admin)  # fmt: skip
            assert imported.status_code == 200, imported.text
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=ADMIN_TOKEN, max_retries=0, timeout=60)

        # requests answered by the host's Ollama, streamed and not
        live = f"test-host {peer.url}"
        await eventually(lambda: served_by(client, live), 30, "the role served by the host's Ollama")
        await stream(client)
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:  # a role nobody defined: a typed 404
            unknown = await http.post("/api/v1/route", json={"role": "no-such-role"}, headers=admin)
            assert unknown.status_code == 404, unknown.text

        # a provision: the provisioner pulls a library model into the host's Ollama
        done = await bus.completed((await bus.provision(models=[PULLED])).request_id, timeout_s=60)
        assert [a.action for a in done.actions] == ["pulled"]

        # a malformed event: its consumers dead-letter it
        nc = await nats.connect(nats_url)
        try:
            await nc.jetstream().publish(GpuSampled.SUBJECT, b"not json")
        finally:
            await nc.close()

        # the backend goes: the role degrades and the fallback's slot answers; it returns: the slot is evicted
        peer.stop()
        await eventually(lambda: served_by(client, "fallback "), 90, "the role served by the fallback slot")
        await stream(client)
        during = await scrape_all()  # what exists only while a slot is loaded (its memory)
        back = OllamaPeer(port=port, library=[library_model(PULLED, 4 << 20)]).start()
        back.install(CODER)
        await eventually(lambda: served_by(client, live), 30, "the role served by its backend again")

        async def evicted() -> Samples | None:
            every = await scrape_all()
            return every if every.value("modelfleet_fallback_evictions_total") >= 1 else None

        samples = await eventually(evicted, 30, "the idle slot's eviction counted")
        assert during.value("modelfleet_fallback_slot_memory_bytes") > 0
        exposed = samples.names() | during.names() | PROMETHEUS_OWN
        wanted = {where: metric_names(expr) for where, expr in {**dashboard_exprs(), **alert_exprs()}.items()}
        missing = {where: sorted(names - exposed) for where, names in wanted.items() if names - exposed}
        assert not missing, f"metrics no running fleet exposed: {json.dumps(missing, indent=1)}"
        # and the fleet really did what the dashboards show
        assert samples.value("modelfleet_dead_letters_total") >= 1
        assert samples.value("modelfleet_provisioner_operations_total", modelfleet_provision_result="pulled") == 1
        assert samples.value("modelfleet_gateway_backend_selections_total", modelfleet_backend_kind="fallback") >= 1
        assert samples.value("modelfleet_router_circuit_transitions_total") >= 1
        assert samples.value("modelfleet_rpc_failures_total", rpc_response_status_code="404") >= 1
        await client.close()
    finally:
        peer.stop()
        if back is not None:
            back.stop()

"""A performance profile carried through the router and the OpenAI chat endpoint: `POST /api/v1/route` with
`performance_profile`, and `/v1/chat/completions` with the `x-modelfleet-performance-profile` header, reach the
Ollama peer as options (catalog, router, gateway and the peer each a separate process)."""

from __future__ import annotations

from pathlib import Path

import nats
import pytest

from tests.harness.catalog import bearer, catalog_fleet
from tests.harness.cli import ADMIN_TOKEN
from tests.harness.fleet_events import gpu_sample, publish
from tests.harness.waiting import until
from tests.peers.ollama_server import OllamaPeer

pytestmark = pytest.mark.e2e

SEED = Path(__file__).resolve().parents[1] / "fixtures" / "catalog" / "config_enhanced.toml"
ADMIN = bearer(ADMIN_TOKEN)
HEADER = "x-modelfleet-performance-profile"


async def test_route_and_chat_apply_the_named_performance_profile(
    nats_url, database_url, service_env, start_service, start_gateway
):
    peer = OllamaPeer().start()
    peer.install("qwen3-coder:30b")
    try:
        async with catalog_fleet(database_url, service_env, start_service, start_gateway) as http:
            await start_service("router", service_env())
            nc = await nats.connect(nats_url)
            await publish(nc.jetstream(), gpu_sample("h1", peer.url, ["qwen3-coder:30b"]))
            await nc.close()
            imported = await http.post("/api/v1/catalog/import", params={"filename": SEED.name},
                                       content=SEED.read_bytes(), headers=ADMIN)  # fmt: skip
            assert imported.status_code == 200, imported.text

            async def routed() -> bool:
                return (await http.post("/api/v1/route", json={"role": "coding"}, headers=ADMIN)).status_code == 200

            await until(routed, 20)
            plain = (await http.post("/api/v1/route", json={"role": "coding"}, headers=ADMIN)).json()
            tuned = await http.post("/api/v1/route", json={"role": "coding", "performance_profile": "code_gen"},
                                    headers=ADMIN)  # fmt: skip
            assert tuned.status_code == 200, tuned.text
            assert tuned.json()["options"]["num_predict"] == 2048 and tuned.json()["options"]["temperature"] == 0.2
            assert plain["options"].get("num_predict") != 2048
            unknown = await http.post("/api/v1/route", json={"role": "coding", "performance_profile": "turbo"},
                                      headers=ADMIN)  # fmt: skip
            assert unknown.status_code == 404 and unknown.json()["field"] == "performance_profile", unknown.text

            chat = {"model": "coding", "messages": [{"role": "user", "content": "hi"}]}
            answered = await http.post("/v1/chat/completions", json=chat, headers={**ADMIN, HEADER: "balanced"})
            assert answered.status_code == 200, answered.text
            options = peer.chat_requests[-1]["options"]
            assert options["temperature"] == 0.7 and options["num_predict"] == 1024 and options["top_k"] == 50
            bad = await http.post("/v1/chat/completions", json=chat, headers={**ADMIN, HEADER: "no such"})
            assert bad.status_code == 422
            missing = await http.post("/v1/chat/completions", json=chat, headers={**ADMIN, HEADER: "turbo"})
            assert missing.status_code == 404 and "turbo" in missing.text
    finally:
        peer.stop()

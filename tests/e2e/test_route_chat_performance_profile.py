"""A performance profile carried through the router and the OpenAI chat endpoint: `POST /api/v1/route` with
`performance_profile`, `modelfleet route --performance-profile P` (the CLI process), and `/v1/chat/completions` with
the `x-modelfleet-performance-profile` header, reach the Ollama peer as options (catalog, router, gateway and the
peer each a separate process)."""

from __future__ import annotations

import json
from pathlib import Path

import nats
import pytest

from tests.harness.catalog import bearer, catalog_fleet
from tests.harness.cli import ADMIN_TOKEN, run_cli
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

            # the same through the CLI, as an operator runs it
            url = str(http.base_url).rstrip("/")
            by_cli = await run_cli(url, "route", "--role", "coding", "--performance-profile", "code_gen", "--json")
            assert by_cli.returncode == 0, by_cli.stderr
            cli_options = json.loads(by_cli.stdout)["options"]
            assert cli_options["temperature"] == 0.2 and cli_options["num_predict"] == 2048
            short = await run_cli(url, "route", "--role", "coding", "-P", "balanced")
            assert short.returncode == 0, short.stderr
            assert '"num_predict": 1024' in short.stdout and '"temperature": 0.7' in short.stdout
            by_cli = await run_cli(url, "route", "--role", "coding", "--performance-profile", "turbo")
            assert by_cli.returncode == 1 and "404" in by_cli.stderr and "turbo" in by_cli.stderr

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

"""`modelfleet route --performance-profile P` as a user runs it: the CLI process against the gateway, catalog and
router processes and the Ollama peer; the profile's parameters are in the routed options, an unknown one is a 404."""

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


async def test_route_cli_applies_the_named_performance_profile(
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
            url = str(http.base_url).rstrip("/")
            tuned = await run_cli(url, "route", "--role", "coding", "--performance-profile", "code_gen", "--json")
            assert tuned.returncode == 0, tuned.stderr
            options = json.loads(tuned.stdout)["options"]
            assert options["temperature"] == 0.2 and options["num_predict"] == 2048
            plain = await run_cli(url, "route", "--role", "coding", "--json")
            assert json.loads(plain.stdout)["options"].get("num_predict") != 2048
            short = await run_cli(url, "route", "--role", "coding", "-P", "balanced")
            assert short.returncode == 0, short.stderr
            assert '"num_predict": 1024' in short.stdout and '"temperature": 0.7' in short.stdout
            unknown = await run_cli(url, "route", "--role", "coding", "--performance-profile", "turbo")
            assert unknown.returncode == 1 and "404" in unknown.stderr and "turbo" in unknown.stderr
    finally:
        peer.stop()

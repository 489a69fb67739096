"""POST /api/v1/route and GET /api/v1/backends through the gateway and the CLI (JSON and tables), with a catalog,
a router and the Ollama peer as the one backend, each a separate process."""

from __future__ import annotations

import json

import nats
import pytest
from typer.testing import CliRunner

from services.cli.main import app as cli
from tests.harness.catalog import bearer, catalog_fleet
from tests.harness.cli import ADMIN_TOKEN
from tests.harness.fleet_events import gpu_sample, publish
from tests.harness.waiting import until
from tests.peers.ollama_server import OllamaPeer

pytestmark = pytest.mark.e2e


async def test_route_and_backends_over_http_and_the_cli(
    nats_url, database_url, service_env, start_service, start_gateway, monkeypatch
):
    peer = OllamaPeer().start()
    peer.install("qwen3-coder:30b")  # so that /api/chat answers for it
    try:
        async with catalog_fleet(database_url, service_env, start_service, start_gateway) as http:
            await start_service("router", service_env())
            nc = await nats.connect(nats_url)
            await publish(nc.jetstream(), gpu_sample("h1", peer.url, ["qwen3-coder:30b"]))
            await nc.close()
            admin = bearer(ADMIN_TOKEN)

            async def routed() -> bool:
                return (await http.post("/api/v1/route", json={"role": "coding"}, headers=admin)).status_code == 200

            await until(routed, 20)
            got = (
                await http.post("/api/v1/route", json={"role": "coding", "prompt_tokens": 70000}, headers=admin)
            ).json()
            assert got["backend"] == {"host_id": "h1", "kind": "ollama", "base_url": peer.url, "max_in_flight": 64}
            assert got["model_name"] == "qwen3-coder:30b" and got["options"]["num_ctx"] == 70000
            assert got["reuse"] is None  # the prompt raised num_ctx: not reusable (docs/router.md "Route reuse")
            assert (await http.post("/api/v1/route", json={"role": "coding"})).status_code == 401
            none = await http.post("/api/v1/route", json={"role": "vision"}, headers=admin)
            assert none.status_code == 503 and none.json()["code"] == "no_backend"
            listed = (await http.get("/api/v1/backends", headers=admin)).json()
            b = next(b for b in listed["backends"] if b["host_id"] == "h1")
            assert b["healthy"] and b["circuit"] == "closed" and "qwen3-coder:30b" in b["loaded"]

            monkeypatch.setenv("MODELFLEET_URL", str(http.base_url).rstrip("/"))
            monkeypatch.setenv("MODELFLEET_TOKEN", ADMIN_TOKEN)
            monkeypatch.setenv("COLUMNS", "250")  # a table wide enough for every column
            runner = CliRunner()
            shown = runner.invoke(cli, ["route", "--role", "coding", "--json"])
            assert shown.exit_code == 0, shown.output
            assert json.loads(shown.output)["backend"]["base_url"] == peer.url
            table = runner.invoke(cli, ["route", "--role", "coding"])
            assert table.exit_code == 0 and "qwen3-coder:30b" in table.output and "h1" in table.output
            assert "reused by a gateway for up to 500 ms (prompts up to 65536 tokens)" in table.output
            backends = runner.invoke(cli, ["backends", "--json"])
            assert backends.exit_code == 0 and peer.url in {
                b["base_url"] for b in json.loads(backends.output)["backends"]
            }
            rows = runner.invoke(cli, ["backends"])
            assert rows.exit_code == 0 and "h1" in rows.output and "healthy" in rows.output
            said = runner.invoke(cli, ["chat", "--role", "coding", "say hi"])
            assert said.exit_code == 0 and said.output.strip(), said.output  # streamed tokens from the peer
            whole = runner.invoke(cli, ["chat", "--role", "coding", "say hi", "--json"])
            assert whole.exit_code == 0 and json.loads(whole.output)["object"] == "chat.completion", whole.output
    finally:
        peer.stop()

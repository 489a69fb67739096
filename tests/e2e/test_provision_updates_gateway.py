"""The update check through the gateway process and the CLI: `GET /api/v1/updates` (any valid token),
`POST /api/v1/updates/check` (admin), `modelfleet updates status|check [--json]`, with the catalog (user tokens),
provisioner and gateway processes and the Ollama peer as host and registry."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.harness.cli import ADMIN_TOKEN as TOKEN
from tests.harness.cli import run_cli
from tests.harness.provision_bus import provisioner_env
from tests.peers.hub_server import HubPeer
from tests.peers.ollama_server import OllamaPeer, library_model

pytestmark = pytest.mark.e2e


async def test_update_status_and_check_through_gateway_and_cli(
    service_env, database_url, tmp_path, start_service, start_gateway
):
    with (
        OllamaPeer(library=[library_model("qwen3:8b", 1 << 20), library_model("phi4:mini")]) as ollama,
        HubPeer() as hub,
    ):
        await start_service("catalog", service_env(database_url=database_url, MODELFLEET_ADMIN_TOKEN=TOKEN))
        registry = {"MODELFLEET_PROVISIONER_OLLAMA_REGISTRY": ollama.url}
        env = provisioner_env(service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url}, **registry)
        await start_service("provisioner", env)
        url = await start_gateway(service_env(MODELFLEET_ADMIN_TOKEN=TOKEN))
        admin = {"Authorization": f"Bearer {TOKEN}"}

        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            issued = await http.post("/api/v1/users/alice/tokens", json={}, headers=admin)
            assert issued.status_code == 201, issued.text
            alice = {"Authorization": f"Bearer {issued.json()['token']}"}
            assert (await http.get("/api/v1/updates")).status_code == 401
            assert (await http.post("/api/v1/updates/check")).status_code == 401
            assert (await http.post("/api/v1/updates/check", headers=alice)).status_code == 403
            seen = await http.get("/api/v1/updates", headers=alice)
            assert seen.status_code == 200, seen.text
            assert seen.json()["interval_enabled"] and seen.json()["interval_s"] == 86400

            r = await http.post("/api/v1/models/provision", json={"models": ["qwen3:8b", "phi4:mini"], "wait": True},
                                headers=admin)  # fmt: skip
            assert [a["action"] for a in r.json()["actions"]] == ["pulled", "pulled"], r.text
        old = ollama.installed["qwen3:8b"].digest
        new = ollama.publish_update("qwen3:8b")

        checked = await run_cli(url, "updates", "check", "--json")
        assert checked.returncode == 0, checked.stderr
        summary = json.loads(checked.stdout)
        assert summary["checked"] == 2 and summary["errors"] == [] and not summary["skipped"]
        [found] = summary["found"]
        assert (found["host"], found["model"], found["source"]) == ("gpu-1", "qwen3:8b", "curated")
        assert (found["installed_digest"], found["remote_digest"]) == (f"sha256:{old}", f"sha256:{new}")

        status = await run_cli(url, "updates", "status", "--json")
        assert status.returncode == 0, status.stderr
        reply = json.loads(status.stdout)
        assert reply["last"] == summary and not reply["running"] and reply["next_due_at"]

        table = await run_cli(url, "updates", "status")
        assert table.returncode == 0, table.stderr
        assert "updates available" in table.stdout and "qwen3:8b" in table.stdout
        assert f"sha256:{old[:12]}" in table.stdout and f"sha256:{new[:12]}" in table.stdout
        assert "1 update(s)" in table.stdout and "next check due" in table.stdout

        again = await run_cli(url, "updates", "check")
        assert again.returncode == 0, again.stderr
        assert "2 model(s) compared, 1 update(s), 0 error(s)" in again.stdout and "qwen3:8b" in again.stdout

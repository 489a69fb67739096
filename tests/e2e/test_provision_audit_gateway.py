"""The provisioning audit trail through the gateway and the CLI: catalog, provisioner and gateway processes with the
Ollama and hub peers; `GET /api/v1/provision/audit` (admin) and `modelfleet provision audit`."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.harness.catalog import bearer
from tests.harness.cli import ADMIN_TOKEN, run_cli
from tests.harness.provision_bus import MIB, provisioner_env
from tests.peers.hub_server import HubPeer
from tests.peers.ollama_server import OllamaPeer, library_model

pytestmark = pytest.mark.e2e

ADMIN = bearer(ADMIN_TOKEN)


async def test_audit_trail_over_rest_and_cli(service_env, database_url, tmp_path, start_service, start_gateway):
    library = [library_model("qwen3:8b", 2 * MIB), library_model("tiny:1b", MIB)]
    with OllamaPeer(library=library) as ollama, HubPeer() as hub:
        env = service_env(database_url=database_url, MODELFLEET_ADMIN_TOKEN=ADMIN_TOKEN)
        await start_service("catalog", env)
        await start_service("provisioner", provisioner_env(service_env, database_url, tmp_path, hub.url,
                                                           {"gpu-1": ollama.url}))  # fmt: skip
        url = await start_gateway(env)
        async with httpx.AsyncClient(base_url=url, headers=ADMIN, timeout=60) as http:
            first = await http.post("/api/v1/models/provision", json={"models": ["qwen3:8b"], "wait": True})
            assert first.status_code == 200, first.text
            second = await http.post("/api/v1/models/provision", json={"models": ["tiny:1b", "gone:7b"], "wait": True})
            assert second.status_code == 200, second.text

            r = await http.get("/api/v1/provision/audit")
            assert r.status_code == 200, r.text
            rows = r.json()["entries"]
            assert [e["id"] for e in rows] == sorted((e["id"] for e in rows), reverse=True)
            assert sorted((e["model"], e["action"], e["result"]) for e in rows) == [
                ("gone:7b", "provision", "failed"), ("qwen3:8b", "pull", "ok"), ("tiny:1b", "pull", "ok")
            ]  # fmt: skip
            assert rows[-1]["model"] == "qwen3:8b" and rows[-1]["actor"] == "admin"
            assert rows[-1]["request_id"] == first.json()["request_id"]

            mine = await http.get("/api/v1/provision/audit", params={"request_id": second.json()["request_id"]})
            assert sorted(e["model"] for e in mine.json()["entries"]) == ["gone:7b", "tiny:1b"]
            one = await http.get("/api/v1/provision/audit", params={"model": "tiny:1b", "host": "gpu-1", "limit": 1})
            assert [e["model"] for e in one.json()["entries"]] == ["tiny:1b"]
            later = await http.get("/api/v1/provision/audit", params={"since": "2999-01-01T00:00:00Z"})
            assert later.json()["entries"] == []

            for params, field in [
                ({"limit": 0}, "limit"), ({"limit": 1001}, "limit"), ({"request_id": "x"}, "request_id"),
                ({"since": "yesterday"}, "since"), ({"since": "2026-02-30T00:00:00Z"}, "since"), ({"host": ""}, "host"),
            ]:  # fmt: skip
                bad = await http.get("/api/v1/provision/audit", params=params)
                assert bad.status_code == 422 and field in bad.text, (params, bad.text)
            issued = await http.post("/api/v1/users/alice/tokens", json={})
            alice = bearer(issued.json()["token"])
            assert (await http.get("/api/v1/provision/audit", headers=alice)).status_code == 403
            assert (await http.get("/api/v1/provision/audit", headers={"Authorization": ""})).status_code == 401

        as_json = await run_cli(url, "provision", "audit", "--model", "qwen3:8b", "--json")
        assert as_json.returncode == 0, as_json.stderr
        assert [e["action"] for e in json.loads(as_json.stdout)["entries"]] == ["pull"]
        table = await run_cli(url, "provision", "audit", "--limit", "2")
        assert table.returncode == 0, table.stderr
        assert "provisioning audit" in table.stdout and "qwen3:8b" not in table.stdout  # the two newest rows only
        refused = await run_cli(url, "provision", "audit", "--limit", "0")
        assert refused.returncode == 2 and "--limit" in refused.stderr
        bad = await run_cli(url, "provision", "audit", "--since", "yesterday")
        assert bad.returncode == 1 and "422" in bad.stderr and "since" in bad.stderr

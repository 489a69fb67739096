"""Provisioning through the gateway and the CLI: provisioner + gateway processes, the hub and Ollama peers."""

from __future__ import annotations

import json

import asyncpg
import httpx
import ollama as ollama_client
import pytest

from services.runtime.db import async_url
from tests.harness.cli import ADMIN_TOKEN, run_cli
from tests.harness.provision_bus import MIB, provisioner_env
from tests.peers.hub_server import HubPeer, generated_file, small_file
from tests.peers.ollama_server import OllamaPeer, library_model

pytestmark = pytest.mark.e2e

TOKEN = ADMIN_TOKEN
REPO = "acme/tiny-GGUF"


async def test_provision_inventory_import_through_gateway_and_cli(
    service_env, database_url, tmp_path, start_service, start_gateway
):
    library = [library_model("qwen3:8b", 4 * MIB), library_model("phi4:mini", 2 * MIB), library_model("tiny:1b", MIB)]
    with OllamaPeer(library=library) as ollama, HubPeer() as hub:
        repo = hub.repo(REPO)
        first = repo.commit([small_file("README.md", b"hi"), generated_file("tiny.Q4_K_M.gguf", 3 * MIB, seed=5)])
        repo.tag("v1", first)
        ollama.install("adopt-me:1b")
        ollama.pull_step_s = 0.1
        env = provisioner_env(service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url})
        await start_service("provisioner", env)
        url = await start_gateway(service_env(MODELFLEET_ADMIN_TOKEN=TOKEN))
        auth = {"Authorization": f"Bearer {TOKEN}"}

        async with httpx.AsyncClient(base_url=url, headers=auth, timeout=60) as http:
            assert (
                await http.post("/api/v1/models/provision", json={}, headers={"Authorization": ""})
            ).status_code == 401
            r = await http.post("/api/v1/models/provision", json={"models": ["qwen3:8b"], "wait": True})
            assert r.status_code == 200, r.text
            assert [(a["model"], a["target_host"], a["action"]) for a in r.json()["actions"]] == [
                ("qwen3:8b", "gpu-1", "pulled")
            ]

            r = await http.post("/api/v1/models/provision", json={"models": ["phi4:mini"]})
            assert r.status_code == 202
            accepted = r.json()
            kinds = []
            async with http.stream("GET", accepted["progress_url"]) as events:
                async for line in events.aiter_lines():
                    if line.startswith("event:"):
                        kinds.append(line[6:].strip())
                        if kinds[-1] == "completed":
                            break
            assert kinds[-1] == "completed" and "progress" in kinds and "pulled" in kinds
            assert kinds.index("pulled") > kinds.index("progress")
            result = (await http.get(accepted["result_url"])).json()
            assert result["done"] and [a["action"] for a in result["actions"]] == ["pulled"]

            inv = (await http.get("/api/v1/inventory", params={"host": "gpu-1"})).json()["entries"]
            assert sorted(e["model_id"] for e in inv) == ["phi4:mini", "qwen3:8b"]
            q = await http.get("/api/v1/hf/quantizations", params={"repo": REPO, "revision": "v1"})
            assert q.status_code == 200 and [x["quantization"] for x in q.json()["quantizations"]] == ["Q4_K_M"]
            assert (
                await http.get("/api/v1/hf/quantizations", params={"repo": "no/such", "revision": "v1"})
            ).status_code == 404
            assert (await http.delete("/api/v1/inventory/gpu-1/never-installed:1b")).status_code == 404
            bad = await http.post("/api/v1/models/import", json={"repo": "../x", "quant": "Q4_K_M", "revision": "v1"})
            assert bad.status_code == 422

        imported = await run_cli(
            url, "import", REPO, "--quant", "Q4_K_M", "--revision", "v1", "--host", "gpu-1", "--json"
        )
        assert imported.returncode == 0, imported.stderr
        [action] = json.loads(imported.stdout)["actions"]
        sha = repo.commits[first]["tiny.Q4_K_M.gguf"].sha256
        assert (action["action"], action["sha256"], action["revision"]) == ("imported", sha, first)
        assert f"sha256:{sha}" in ollama.blobs

        bars = await run_cli(url, "provision", "--models", "tiny:1b", "qwen3:8b", "--hosts", "gpu-1")
        assert bars.returncode == 0, bars.stderr
        assert "gpu-1 × tiny:1b" in bars.stderr and "pulled" in bars.stdout and "present" in bars.stdout

        alias = await run_cli(url, "--models", "tiny:1b", "--json", module="scripts.provision_models")
        assert alias.returncode == 0, alias.stderr
        assert [a["action"] for a in json.loads(alias.stdout)["actions"]] == ["present"]
        assert "scripts.models.provision" in alias.stderr

        (tmp_path / "models" / "loose").mkdir(parents=True)
        (tmp_path / "models" / "loose" / "mine.Q5_K_M.gguf").write_bytes(b"GGUF" + b"\0" * 100)
        await ollama_client.AsyncClient(host=ollama.url).chat(
            model="qwen3:8b", messages=[{"role": "user", "content": "hi"}]
        )
        synced = await run_cli(url, "inventory", "sync", "--json")
        assert synced.returncode == 0, synced.stderr
        adopted = {(e["model_id"], e["source"]) for e in json.loads(synced.stdout)["adopted"]}
        assert adopted == {("adopt-me:1b", "discovered"), ("file:loose/mine.Q5_K_M.gguf", "local")}
        again = json.loads((await run_cli(url, "inventory", "sync", "--json")).stdout)
        assert again["adopted"] == []  # duplicates are recognised

        listed = json.loads((await run_cli(url, "inventory", "list", "--json")).stdout)["entries"]
        assert len(listed) == 6
        used = {e["model_id"]: e["last_used"] for e in listed}
        assert used["qwen3:8b"] is not None and used["phi4:mini"] is None  # loaded in /api/ps at sync time
        removed = await run_cli(url, "inventory", "rm", "gpu-1", "adopt-me:1b", "--json")
        assert json.loads(removed.stdout) == {
            "host": "gpu-1", "model": "adopt-me:1b", "removed_from_host": True, "removed_from_inventory": True
        }  # fmt: skip
        assert "adopt-me:1b" not in ollama.installed
        kept = await run_cli(url, "inventory", "rm", "gpu-1", "qwen3:8b", "--inventory-only", "--json")
        assert json.loads(kept.stdout)["removed_from_host"] is False and "qwen3:8b" in ollama.installed
        downloaded = tmp_path / "models" / REPO / first / "tiny.Q4_K_M.gguf"
        assert downloaded.exists()
        gone = await run_cli(url, "inventory", "rm", "gpu-1", f"hf.co/{REPO}:Q4_K_M@v1", "--json")
        assert json.loads(gone.stdout)["removed_from_host"] is True and not downloaded.exists()

    conn = await asyncpg.connect(async_url(database_url).replace("+asyncpg", ""))
    try:
        rows = await conn.fetch(
            "SELECT actor, action, model, sha256, revision, result FROM provisioner.audit ORDER BY id"
        )
    finally:
        await conn.close()
    audit = {(r["actor"], r["action"], r["model"], r["result"]) for r in rows}
    assert ("admin", "pull", "qwen3:8b", "ok") in audit
    assert ("admin", "import", f"hf.co/{REPO}:Q4_K_M@v1", "ok") in audit
    assert ("admin", "delete", "adopt-me:1b", "ok") in audit and ("admin", "adopt", "adopt-me:1b", "ok") in audit
    [imp] = [r for r in rows if r["action"] == "import"]
    assert (imp["sha256"], imp["revision"]) == (sha, first)

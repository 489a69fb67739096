"""Outbound calls a request causes connect within a bound and answer 503 naming the dependency that took no
connection: the hub behind `GET /api/v1/hf/quantizations` (the provisioner asks it), a caller's `gguf_url` (the
gateway reads it) and a host's Ollama behind an inventory delete (the provisioner asks it). The address never
answers (tests/harness/blackhole.py); the bounds are made small through their settings so that the test is quick.
Nothing here measures time: the answers are asserted, not their speed."""

from __future__ import annotations

import httpx
import pytest

from tests.harness.blackhole import blackhole
from tests.harness.cli import ADMIN_TOKEN
from tests.harness.provision_bus import provisioner_env

pytestmark = pytest.mark.e2e


async def test_unreachable_hub_and_gguf_url_answer_503_naming_them(
    service_env, database_url, tmp_path, start_service, start_gateway
):
    with blackhole() as port:
        hub = f"http://127.0.0.1:{port}"
        await start_service(
            "provisioner",
            provisioner_env(
                service_env,
                database_url,
                tmp_path,
                hub,
                {"gpu-9": hub},
                MODELFLEET_PROVISIONER_HUB_CONNECT_TIMEOUT_S="0.3",
                MODELFLEET_PROVISIONER_OLLAMA_TIMEOUT_S="0.3",
            ),
        )
        url = await start_gateway(
            service_env(MODELFLEET_ADMIN_TOKEN=ADMIN_TOKEN, MODELFLEET_GATEWAY_OUTBOUND_CONNECT_TIMEOUT_S="0.3")
        )
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
            r = await client.get("/api/v1/hf/quantizations", params={"repo": "acme/tiny-GGUF"})
            assert r.status_code == 503, r.text
            body = r.json()
            assert body["code"] == "unavailable", body
            assert f"the Hugging Face hub at {hub} is unreachable: no connection within 0.3s" in body["detail"], body

            r = await client.get("/api/v1/fit", params={"gguf_url": f"{hub}/model.gguf"})
            assert r.status_code == 503, r.text
            body = r.json()
            assert body["code"] == "unavailable" and body["field"] == "gguf_url", body
            assert "127.0.0.1 is unreachable: no connection within 0.3s" in body["detail"], body

            # A host's Ollama that takes no connection (the provisioner's connect bound is at most 10 s, here 0.3).
            r = await client.delete("/api/v1/inventory/gpu-9/qwen3:8b")
            assert r.status_code == 503, r.text
            body = r.json()
            assert body["code"] == "unavailable" and f"Ollama at {hub} is unreachable" in body["detail"], body

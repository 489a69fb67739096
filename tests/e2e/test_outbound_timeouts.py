"""Outbound calls a request causes connect within a bound and answer 503 naming the dependency that took no
connection: the hub behind `GET /api/v1/hf/quantizations` (the provisioner asks it), a caller's `gguf_url` (the
gateway reads it) and a host's Ollama behind an inventory delete (the provisioner asks it). The address never
answers (tests/harness/blackhole.py); the bounds are made small through their settings so that the test is quick.
A `gguf_url` whose server takes the connection and then never answers (tests/harness/silent_server.py) is a 504
within the gateway's read bound, set small here. Nothing here measures time: the answers are asserted, not their
speed."""

from __future__ import annotations

import httpx
import pytest

from tests.harness.blackhole import blackhole
from tests.harness.cli import ADMIN_TOKEN
from tests.harness.provision_bus import provisioner_env
from tests.harness.silent_server import silent_server
from tests.harness.waiting import eventually

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


async def test_a_gguf_url_that_connects_and_stays_silent_answers_504_naming_it(service_env, start_gateway):
    """The read bound (`MODELFLEET_GATEWAY_OUTBOUND_READ_TIMEOUT_S`, 30 s unless set, here 0.3): a server that takes
    the connection and the request and never sends a byte is a 504 `timeout` naming the URL's host as given (a name:
    not the address it resolved to) and the field, not a hang and not a 503 (it did connect)."""
    with silent_server("localhost") as server:
        url = await start_gateway(
            service_env(
                MODELFLEET_ADMIN_TOKEN=ADMIN_TOKEN,
                # allowlisted as an operator would a GGUF server on this machine: by name and port, nothing else
                MODELFLEET_EGRESS_ALLOW=f"localhost:{server.port}",
                MODELFLEET_GATEWAY_OUTBOUND_CONNECT_TIMEOUT_S="5",
                MODELFLEET_GATEWAY_OUTBOUND_READ_TIMEOUT_S="0.3",
            )
        )
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
            gguf_url = f"http://localhost:{server.port}/model.gguf"
            r = await client.get("/api/v1/fit", params={"gguf_url": gguf_url})
        assert r.status_code == 504, r.text
        body = r.json()
        assert body["code"] == "timeout" and body["field"] == "gguf_url", body
        assert body["detail"].startswith("gguf_url: localhost did not answer within 0.3s"), body
        for learnt in server.addresses:  # what answered is not told, only the host the caller gave
            assert learnt not in body["detail"], body

        # It was the silence that timed out: the server holds the gateway's ranged GET for the file.
        async def got_request() -> bool:
            return any(b"GET /model.gguf " in r and b"range: bytes=0-" in r.lower() for r in server.received())

        await eventually(got_request, timeout_s=10, what="the gateway's request at the silent server")

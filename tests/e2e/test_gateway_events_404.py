"""Unknown ids answer 404, streams included: the provisioning SSE of a request the fleet never saw (no command, no
result) is a 404 at once, not keep-alives forever; a request just submitted (its command not yet consumed) streams."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.harness.cli import ADMIN_TOKEN
from tests.harness.provision_bus import MIB, provisioner_env
from tests.peers.hub_server import HubPeer
from tests.peers.ollama_server import OllamaPeer, library_model

pytestmark = pytest.mark.e2e


async def _kinds(http: httpx.AsyncClient, url: str) -> tuple[int, list[str]]:
    kinds: list[str] = []
    async with http.stream("GET", url) as events:
        if events.status_code != 200:
            await events.aread()
            return events.status_code, [events.text]
        async for line in events.aiter_lines():
            if line.startswith("event:"):
                kinds.append(line[6:].strip())
                if kinds[-1] == "completed":
                    break
    return 200, kinds


async def test_provision_events_of_an_unknown_request_is_404(
    service_env, database_url, tmp_path, start_service, start_gateway
):
    with OllamaPeer(library=[library_model("tiny:1b", MIB)]) as ollama, HubPeer() as hub:
        await start_service(
            "provisioner", provisioner_env(service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url})
        )
        url = await start_gateway(service_env(MODELFLEET_ADMIN_TOKEN=ADMIN_TOKEN))
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with httpx.AsyncClient(base_url=url, headers=auth, timeout=httpx.Timeout(30, read=20)) as http:
            unknown = uuid.uuid4()
            status, body = await _kinds(http, f"/api/v1/models/provision/{unknown}/events")
            assert status == 404, body
            assert str(unknown) in body[0] and "request_id" in body[0]
            since = await _kinds(http, f"/api/v1/models/provision/{unknown}/events?since=2020-01-01T00:00:00Z")
            assert since[0] == 404
            assert (await http.get(f"/api/v1/models/provision/{unknown}/events?since=0.5")).status_code == 422

            accepted = (await http.post("/api/v1/models/provision", json={"models": ["tiny:1b"]})).json()
            status, kinds = await _kinds(http, accepted["progress_url"])
            assert status == 200 and kinds[-1] == "completed", kinds
            # once finished, the same stream is still found (its command and its result are stored)
            again = await _kinds(http, f"/api/v1/models/provision/{accepted['request_id']}/events")
            assert again == (200, kinds)

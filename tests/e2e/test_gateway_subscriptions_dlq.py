"""The gateway's raw NATS subscriptions survive a malformed message: the provisioning SSE skips a payload that is not
JSON (or not an object), logs it, publishes it to `dlq.<subject>` as a DeadLetter naming the gateway's consumer, and
goes on to the request's `completed` event."""

from __future__ import annotations

import base64
import json

import httpx
import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from contracts.provisioner import ProvisionProgress
from contracts.subjects import DLQ_STREAM, EVENTS_STREAM
from tests.harness.cli import ADMIN_TOKEN
from tests.harness.provision_bus import MIB, provisioner_env
from tests.harness.waiting import eventually
from tests.peers.hub_server import HubPeer
from tests.peers.ollama_server import OllamaPeer, library_model

pytestmark = pytest.mark.e2e

GARBAGE = [b"\xff not json", b"[1, 2]"]


async def test_provision_events_stream_survives_malformed_messages(
    nats_url, service_env, database_url, tmp_path, start_service, start_gateway
):
    with OllamaPeer(library=[library_model("tiny:1b", MIB)]) as ollama, HubPeer() as hub:
        await start_service(
            "provisioner", provisioner_env(service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url})
        )
        url = await start_gateway(service_env(MODELFLEET_ADMIN_TOKEN=ADMIN_TOKEN))
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            async with httpx.AsyncClient(base_url=url, headers=auth, timeout=httpx.Timeout(30, read=20)) as http:
                accepted = (await http.post("/api/v1/models/provision", json={"models": ["tiny:1b"]})).json()
                for raw in GARBAGE:  # after the request's `since`: the stream reads them before its own events
                    await js.publish(ProvisionProgress.SUBJECT, raw, stream=EVENTS_STREAM)
                kinds: list[str] = []
                async with http.stream("GET", accepted["progress_url"]) as events:
                    assert events.status_code == 200
                    async for line in events.aiter_lines():
                        if line.startswith("event:"):
                            kinds.append(line[6:].strip())
                            if kinds[-1] == "completed":
                                break
                assert kinds[-1] == "completed" and "pulled" in kinds, kinds

            sub = await js.subscribe(
                f"dlq.{ProvisionProgress.SUBJECT}", stream=DLQ_STREAM, ordered_consumer=True,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
            )  # fmt: skip
            letters: list[dict[str, object]] = []

            async def both() -> bool:
                while len(letters) < len(GARBAGE):
                    letters.append(json.loads((await sub.next_msg(timeout=1)).data))
                return True

            await eventually(both, timeout_s=15, what="two dead letters from the gateway")
            assert sorted(base64.b64decode(str(x["raw"])) for x in letters) == sorted(GARBAGE)
            assert {x["consumer"] for x in letters} == {"gateway/provision-events"}
            assert {x["original_subject"] for x in letters} == {ProvisionProgress.SUBJECT}
            assert {x["producer"] for x in letters} == {"gateway"}
        finally:
            await nc.close()

"""A `wait: true` provision whose command the provisioner gives up on (dead-lettered: no `request.completed` will
ever come) ends at once with 502 `dead_lettered` and the provisioner's reason, not at its timeout.

The provisioner is played on the bus by the test: it answers the health ask, and for each command it sees publishes
the `evt.provisioner.failed.v1` a dead-lettered command gets (target `*`, error_channel `dead_letter`)."""

from __future__ import annotations

from typing import Any

import httpx
import nats
import pytest

from contracts.health import HealthReply, HealthRequest
from contracts.provisioner import ProvisionCommand, ProvisionFailed
from contracts.subjects import fill
from tests.harness.waiting import eventually

pytestmark = pytest.mark.e2e
TOKEN = "dead-letter-wait-admin"
REASON = "cmd.provisioner.provision.v1 dead-lettered by provisioner: gave up after 10 deliveries"


async def test_a_dead_lettered_command_ends_the_wait_with_502(nats_url, service_env, start_gateway):
    nc = await nats.connect(nats_url)
    seen: list[ProvisionCommand] = []

    async def health(msg: Any) -> None:
        reply = HealthReply(
            service="provisioner", version="1", instance_id="stand-in", host="test-host", uptime_s=1.0,
            healthy=True, nats="up", database="up",
        )  # fmt: skip
        await msg.respond(reply.model_dump_json().encode())

    async def command(msg: Any) -> None:
        cmd = ProvisionCommand.model_validate_json(msg.data)
        seen.append(cmd)
        failed = ProvisionFailed(
            producer="provisioner", host="test-host", correlation_id=cmd.request_id, request_id=cmd.request_id,
            target_host="*", model="*", reason=REASON, error_channel="dead_letter",
        )  # fmt: skip
        await nc.publish(ProvisionFailed.SUBJECT, failed.model_dump_json().encode())

    try:
        await nc.subscribe(fill(HealthRequest.SUBJECT, service="provisioner"), cb=health)
        await nc.subscribe(ProvisionCommand.SUBJECT, cb=command)
        await nc.flush()
        url = await start_gateway(service_env(MODELFLEET_ADMIN_TOKEN=TOKEN))
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:

            async def answered() -> httpx.Response | None:  # the gateway connects to NATS in the background
                r = await http.post(
                    "/api/v1/models/provision", json={"models": ["qwen3:8b"], "wait": True, "timeout_s": 600}
                )
                return None if "not connected" in r.text else r

            r = await eventually(answered, timeout_s=30, what="the gateway's answer")
        assert r.status_code == 502, r.text
        body = r.json()
        assert body["code"] == "dead_lettered", body
        assert f"the provisioner gave up on request {seen[-1].request_id}: {REASON}" == body["detail"], body
    finally:
        await nc.close()

"""rpc.router.route.v1 for an auto_download role whose model is installed nowhere, with no provisioner running: a
503 at once saying so, and no command left in the stream to run later."""

from __future__ import annotations

import nats
import pytest

from contracts.provisioner import ProvisionCommand
from tests.harness.fleet_events import gpu_sample, publish, route
from tests.harness.waiting import eventually

pytestmark = pytest.mark.integration


async def test_no_healthy_provisioner_means_a_503_and_no_command(nats_url, database_url, service_env, start_service):
    await start_service("catalog", service_env(database_url=database_url))
    await start_service("router", service_env(MODELFLEET_ROUTER_CHECK_INTERVAL_S="86400"))
    nc = await nats.connect(nats_url)
    try:
        commands = await nc.subscribe(ProvisionCommand.SUBJECT)
        await publish(nc.jetstream(), gpu_sample("gpu-1", "http://gpu-1.test:11434"))  # a host, no model on it

        async def refused() -> dict[str, object] | None:
            got = (await route(nc, role="coding")).get("error")
            return got if isinstance(got, dict) and "provisioner" in str(got.get("detail")) else None

        error = await eventually(refused, 20, "the router's 503")
        assert error["status"] == 503 and error["code"] == "no_backend" and error["field"] == "role"
        assert error["detail"] == (
            "no backend serves role 'coding': qwen3-coder:30b is installed nowhere and no healthy provisioner answers "
            "to pull it (auto_download)"
        )
        await nc.flush()
        assert commands.pending_msgs == 0  # a command would have come before the reply (one connection, in order)
    finally:
        await nc.close()

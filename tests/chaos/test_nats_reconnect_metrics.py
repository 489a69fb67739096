"""NATS goes away under a running service and comes back: its /metrics counts the disconnect and the reconnect."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.runtime.embedded import EmbeddedNats, free_port
from tests.harness.metrics import Samples, scrape_async
from tests.harness.processes import ServiceProcess
from tests.harness.waiting import eventually

pytestmark = pytest.mark.chaos

EVENTS = "modelfleet_nats_connection_events_total"


async def test_disconnect_and_reconnect_are_counted(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats", port=free_port()).start()
    port = free_port()
    env = {
        "MODELFLEET_NATS_URL": server.url, "MODELFLEET_STATE_DIR": str(tmp_path / "state"),
        "MODELFLEET_HOST_ID": "chaos-host", "MODELFLEET_RETRY_MAX_S": "0.5", "MODELFLEET_METRICS_PORT": str(port),
    }  # fmt: skip
    proc = ServiceProcess("router", env, tmp_path / "router.log").start()
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        await proc.wait_healthy(server.url, 30)
        before = await scrape_async(url)
        assert before.value(EVENTS) == 0  # nothing lost yet: the counter has not appeared

        server.stop()

        async def disconnected() -> Samples | None:
            got = await scrape_async(url)
            return got if got.value(EVENTS, modelfleet_nats_event="disconnected") >= 1 else None

        await eventually(disconnected, 20, "the disconnect counted")
        server.start()  # same port: the client's reconnect loop finds it

        async def reconnected() -> Samples | None:
            got = await scrape_async(url)
            return got if got.value(EVENTS, modelfleet_nats_event="reconnected") >= 1 else None

        await eventually(reconnected, 30, "the reconnect counted")
        await proc.wait_healthy(server.url, 30)
    finally:
        proc.stop()
        server.stop()

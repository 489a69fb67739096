"""A service process, once started, puts what it built to run out of the garbage collector's full collections
(`gc.freeze`) and says how much in its log; a service started inside another process (a test's) leaves that
process's heap alone."""

from __future__ import annotations

import gc
import re
from pathlib import Path

import pytest

from services.runtime.parts import build_parts
from services.runtime.settings import RuntimeSettings
from tests.harness.processes import ServiceProcess
from tests.harness.waiting import eventually

FROZEN = re.compile(r"([\w-]+): (\d+) start-up objects frozen out of the garbage collector's full collections")
#: Far fewer than any service process imports and builds (the router alone: ~100,000 objects), far more than a
#: process that froze before importing its app.
AT_LEAST = 20_000

pytestmark = pytest.mark.integration


async def frozen_in(log: Path) -> tuple[str, int] | None:
    found = FROZEN.search(log.read_text(errors="replace"))
    return (found[1], int(found[2])) if found else None


async def test_a_bus_service_and_the_gateway_each_freeze_their_start_up_heap(
    service_env, start_service, start_gateway, tmp_path
):
    env = service_env()
    router: ServiceProcess = await start_service("router", env)  # type: ignore[assignment]
    name, frozen = await eventually(lambda: frozen_in(router.log_path), 30, "the router's freeze line")
    assert name == "router" and frozen >= AT_LEAST, (name, frozen)

    await start_gateway(env, service="gateway-router")  # the gateway with a router replica in its process
    gateway_log = tmp_path / "logs" / "gateway-router-0.log"
    name, frozen = await eventually(lambda: frozen_in(gateway_log), 30, "the gateway's freeze line")
    assert name == "gateway" and frozen >= AT_LEAST, (name, frozen)


async def test_a_service_started_inside_another_process_freezes_nothing(nats_url, tmp_path):
    """`Service.start` alone (how the fallback's and probe's integration tests run a service in their process) does
    not freeze: only `Service.run`, a service's own process, and the gateway's lifespan do."""
    settings = RuntimeSettings(nats_url=nats_url, state_dir=tmp_path / "state", metrics_port=0)
    service = build_parts("heap-probe", settings).service()
    before = gc.get_freeze_count()
    await service.start()
    try:
        assert service.ready.is_set()
        assert gc.get_freeze_count() == before
    finally:
        await service.stop()

"""`deploy/healthcheck.py --live`, the Kubernetes liveness probe: restart a replica only when the bus answers and
the replica does not. A replica that answers unhealthy is alive (it reconnects by itself), and so is every replica
while NATS itself is away (restarting them would not bring it back)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from contracts.health import HealthReply

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def run_check(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MODELFLEET_", "OTEL_"))}
    return subprocess.run(
        [sys.executable, "deploy/healthcheck.py", *args],
        cwd=ROOT,
        env={**clean, "MODELFLEET_HEALTHCHECK_TIMEOUT_S": "2", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


async def test_a_running_replica_is_alive_and_a_silent_one_is_not(
    nats_url: str, service_env: Callable[..., dict[str, str]], start_service: Callable[..., object]
) -> None:
    await start_service("router", service_env(MODELFLEET_HOST_ID="replica-a"))  # type: ignore[operator]
    alive = await asyncio.to_thread(
        run_check, "--live", "router", env={"MODELFLEET_NATS_URL": nats_url, "MODELFLEET_HOST_ID": "replica-a"}
    )
    assert alive.returncode == 0 and "router: alive (answered (healthy" in alive.stdout, alive.stdout + alive.stderr
    silent = await asyncio.to_thread(
        run_check, "--live", "router", env={"MODELFLEET_NATS_URL": nats_url, "MODELFLEET_HOST_ID": "replica-b"}
    )
    assert silent.returncode == 1 and "router: NOT ANSWERING" in silent.stdout, silent.stdout


async def test_an_unhealthy_answer_is_alive_but_not_ready(nats_url: str) -> None:
    """A replica that lost its database answers `healthy: false`: not ready, but not to be restarted."""
    nc = await nats.connect(nats_url)
    reply = HealthReply(
        producer="catalog", host="sick", service="catalog", version="0", instance_id="i", uptime_s=1.0,
        healthy=False, nats="up", database="down", detail="database: down",
    )  # fmt: skip

    async def answer(msg: Msg) -> None:
        await msg.respond(reply.model_dump_json().encode())

    await nc.subscribe("rpc.catalog.health.v1", cb=answer)
    await nc.flush()
    try:
        env = {"MODELFLEET_NATS_URL": nats_url, "MODELFLEET_HOST_ID": "sick"}
        ready = await asyncio.to_thread(run_check, "catalog", env=env)
        assert ready.returncode == 1 and "catalog: UNHEALTHY (database: down)" in ready.stdout, ready.stdout
        live = await asyncio.to_thread(run_check, "--live", "catalog", env=env)
        assert live.returncode == 0 and "unhealthy: database: down" in live.stdout, live.stdout + live.stderr
    finally:
        await nc.close()


def test_an_unreachable_bus_is_not_the_replicas_fault() -> None:
    env = {"MODELFLEET_NATS_URL": "nats://127.0.0.1:1", "MODELFLEET_HOST_ID": "h"}
    live = run_check("--live", "router", env=env)
    assert live.returncode == 0 and "router: alive (bus unreachable" in live.stdout, live.stdout + live.stderr
    ready = run_check("router", env=env)
    assert ready.returncode == 1 and "UNHEALTHY (bus unreachable" in ready.stdout


def test_usage_names_the_live_flag() -> None:
    done = subprocess.run(
        [sys.executable, "deploy/healthcheck.py", "--live"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 2 and "usage: healthcheck.py [--live] <service>" in done.stderr

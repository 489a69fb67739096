"""A service that loses NATS or PostgreSQL retries with backoff, reports itself unhealthy, and never exits."""

from __future__ import annotations

import asyncio
import json
import time

import nats
import pytest

from services.runtime.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from tests.harness.processes import ServiceProcess
from tests.harness.servers import create_database

pytestmark = pytest.mark.chaos


async def _health(nats_url: str, service: str) -> dict[str, object] | None:
    try:
        nc = await nats.connect(nats_url, connect_timeout=1, max_reconnect_attempts=0)
    except Exception:
        return None
    try:
        return json.loads((await nc.request(f"rpc.{service}.health.v1", b"", timeout=0.5)).data)
    except Exception:
        return None
    finally:
        await nc.close()


async def _until(predicate, timeout_s: float, what: str, proc: ServiceProcess):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        assert proc.proc.poll() is None, f"{proc.service} exited:\n{proc.log_tail()}"
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} not seen in {timeout_s}s (last {last}):\n{proc.log_tail()}")


async def test_service_waits_for_nats_and_survives_its_restart(tmp_path, postgres_server_url):
    database_url = await create_database(postgres_server_url)
    nats_server = EmbeddedNats(tmp_path / "nats", port=free_port())
    env = {
        "MODELFLEET_NATS_URL": nats_server.url,
        "MODELFLEET_DATABASE_URL": database_url,
        "MODELFLEET_STATE_DIR": str(tmp_path / "state"),
        "MODELFLEET_RETRY_MAX_S": "0.5",
    }
    proc = ServiceProcess("provisioner", env, tmp_path / "provisioner.log").start()
    try:
        await asyncio.sleep(1.5)  # NATS is absent: the service must keep retrying, not exit
        assert proc.proc.poll() is None, proc.log_tail()
        nats_server.start()

        async def healthy():
            h = await _health(nats_server.url, "provisioner")
            return h if h and h["healthy"] else None

        await _until(healthy, 20, "healthy after NATS came up", proc)
        nats_server.stop()
        await asyncio.sleep(1.0)
        assert proc.proc.poll() is None, proc.log_tail()
        nats_server.start()
        await _until(healthy, 20, "healthy after NATS restarted", proc)
    finally:
        proc.stop()
        nats_server.stop()


async def test_service_reports_database_down_and_recovers(tmp_path, nats_url):
    pg = EmbeddedPostgres(tmp_path / "pg" / "data", port=free_port(), fsync=False)
    env = {
        "MODELFLEET_NATS_URL": nats_url,
        "MODELFLEET_DATABASE_URL": f"postgresql://modelfleet@127.0.0.1:{pg.port}/modelfleet",
        "MODELFLEET_STATE_DIR": str(tmp_path / "state"),
        "MODELFLEET_RETRY_MAX_S": "0.5",
    }
    proc = ServiceProcess("provisioner", env, tmp_path / "provisioner.log").start()
    try:

        async def db_down():
            h = await _health(nats_url, "provisioner")
            return h if h and h["database"] == "down" and not h["healthy"] else None

        down = await _until(db_down, 20, "database reported down", proc)
        assert "database" in down["detail"]
        pg.start()

        async def healthy():
            h = await _health(nats_url, "provisioner")
            return h if h and h["healthy"] and h["database"] == "up" else None

        await _until(healthy, 30, "healthy once PostgreSQL started", proc)
        pg.stop()
        await _until(db_down, 20, "database reported down after it stopped", proc)
        pg.start()
        await _until(healthy, 30, "healthy once PostgreSQL restarted", proc)
    finally:
        proc.stop()
        pg.stop()

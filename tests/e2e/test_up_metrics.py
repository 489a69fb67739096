"""`modelfleet up` serves every child's /metrics on its own port and says where: each endpoint answers with its
process's service name, and the gateway's and router's show the traffic of the fleet's health checks."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from services.runtime.embedded import free_port
from services.runtime.metrics import METRICS_PORTS
from tests.harness.cli import BIN, stop_up
from tests.harness.metrics import Samples, scrape
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.e2e

LINE = re.compile(r"^metrics (\S+) (http://\S+/metrics)$", re.M)


def test_up_prints_where_each_child_serves_metrics_and_each_answers(tmp_path: Path) -> None:
    state, port, log = tmp_path / "state", free_port(), tmp_path / "up.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELFLEET_", "OTEL_"))}
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN), "up", "--state-dir", str(state), "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def healthy() -> bool:
            assert proc.poll() is None, f"modelfleet up exited with {proc.returncode}:\n{log.read_text()}"
            try:
                return httpx.get(f"{url}/api/v1/health", timeout=3).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 90, "all services healthy")
        where = dict(LINE.findall(log.read_text()))
        assert set(where) == set(METRICS_PORTS), log.read_text()
        assert len({u for u in where.values()}) == len(where)  # one port each

        def served(name: str) -> Samples | None:
            try:
                return scrape(where[name])
            except httpx.HTTPError:
                return None

        for name in where:
            wait_until(lambda name=name: served(name), 30, f"{name}'s /metrics")
            got = served(name)
            assert got is not None and got.find("target_info", service_name=name), name

        # the health request up made went through the gateway, which asked every service over the bus
        gateway = scrape(where["gateway"])
        health = {"http_route": "/api/v1/health", "http_request_method": "GET", "http_response_status_code": "200"}
        assert gateway.value("http_server_request_duration_seconds_count", **health) >= 1
        router = scrape(where["router"])
        assert router.value("modelfleet_rpc_requests_total", rpc_subject="rpc.router.health.v1", rpc_outcome="ok") >= 1
        assert {s.labels["modelfleet_role_state"] for s in router.find("modelfleet_router_roles")} == {
            "healthy",
            "degraded",
            "unserved",
        }
    finally:
        stop_up(proc)

"""Runtime pieces that need no server: settings names, host ids, database URLs, fleet-health folding."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contracts.health import DependencyState, HealthReply
from services.cli.supervisor import Child, Supervisor
from services.gateway.domain import fleet_health
from services.runtime.db import async_url
from services.runtime.hostid import stable_host_id, validate_host_id
from services.runtime.service import event_loop
from services.runtime.settings import RuntimeSettings

pytestmark = pytest.mark.unit


def test_shared_settings_read_the_documented_environment_names(monkeypatch, tmp_path):
    monkeypatch.setenv("MODELFLEET_NATS_URL", "nats://10.0.0.1:4222")
    monkeypatch.setenv("MODELFLEET_DATABASE_URL", "postgresql://u@db/x")
    monkeypatch.setenv("MODELFLEET_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("MODELFLEET_ADMIN_TOKEN", "s3cret")
    s = RuntimeSettings()
    assert (s.nats_url, s.database_url, s.state_dir) == ("nats://10.0.0.1:4222", "postgresql://u@db/x", tmp_path)
    assert s.admin_token is not None
    assert s.admin_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)  # a secret never shows up in logs


def test_per_service_prefix_does_not_hide_the_shared_names(monkeypatch):
    from services.hardware_probe.settings import HardwareProbeSettings

    monkeypatch.setenv("MODELFLEET_NATS_URL", "nats://shared:1")
    monkeypatch.setenv("MODELFLEET_PROBE_INTERVAL_S", "2.5")
    s = HardwareProbeSettings()
    assert (s.nats_url, s.interval_s) == ("nats://shared:1", 2.5)
    monkeypatch.setenv("MODELFLEET_PROBE_INTERVAL_S", "-1")
    with pytest.raises(ValueError, match="interval_s"):
        HardwareProbeSettings()


def test_host_id_is_minted_once_and_kept(tmp_path: Path):
    first = stable_host_id(tmp_path)
    assert first == stable_host_id(tmp_path)
    assert (tmp_path / "host-id").read_text().strip() == first
    assert stable_host_id(tmp_path, "gpu-box-1") == "gpu-box-1"
    with pytest.raises(ValueError, match="host id"):
        validate_host_id("bad host.id")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u@h:5/d", "postgresql+asyncpg://u@h:5/d"),
        ("postgres://u@h/d", "postgresql+asyncpg://u@h/d"),
        ("postgresql+asyncpg://u@h/d", "postgresql+asyncpg://u@h/d"),
    ],
)
def test_database_urls_as_operators_write_them(given, expected):
    assert async_url(given) == expected


def test_a_non_postgres_database_url_is_refused_by_name():
    with pytest.raises(ValueError, match="MODELFLEET_DATABASE_URL"):
        async_url("mysql://u@h/d")


def _reply(service: str, healthy: bool) -> HealthReply:
    return HealthReply(
        service=service, version="1", instance_id="i", host="h", uptime_s=1, healthy=healthy,
        nats=DependencyState.UP, database=DependencyState.NOT_USED,
    )  # fmt: skip


def test_fleet_health_needs_one_healthy_replica_of_every_service():
    ok, report = fleet_health(["a", "b"], [_reply("a", True), _reply("b", False), _reply("b", True)])
    assert ok
    assert report["b"]["status"] == "up"
    ok, report = fleet_health(["a", "b", "c"], [_reply("a", True), _reply("b", False)])
    assert not ok
    assert (report["b"]["status"], report["c"]["status"]) == ("down", "silent")


def test_supervisor_restarts_a_crashing_child_with_growing_backoff(tmp_path):
    child = Child("crasher", [sys.executable, "-c", "raise SystemExit(3)"], {}, tmp_path / "c.log")
    sup = Supervisor([child])
    sup.start_all()
    starts: list[float] = []
    deadline = time.monotonic() + 10
    while child.restarts < 3 and time.monotonic() < deadline:
        for _, code in sup.tick():
            assert code == 3
            starts.append(time.monotonic())
        time.sleep(0.02)
    sup.stop_all()
    assert child.restarts >= 3
    assert child.history[:3] == [3, 3, 3]
    assert child.backoff_s >= 4.0  # 0.5 → 1 → 2 → 4 …


@pytest.mark.parametrize(("given", "expected"), [(None, "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_event_loop_is_uvloop_unless_asyncio_is_asked_for(monkeypatch, given, expected):
    if given is None:
        monkeypatch.delenv("MODELFLEET_EVENT_LOOP", raising=False)
    else:
        monkeypatch.setenv("MODELFLEET_EVENT_LOOP", given)
    assert event_loop() == expected


@pytest.mark.parametrize("module", ["services.gateway", "services.catalog"])
def test_an_unknown_event_loop_stops_a_service_at_start_naming_the_two_it_takes(module):
    env = {**os.environ, "MODELFLEET_EVENT_LOOP": "trio", "MODELFLEET_NATS_URL": "nats://127.0.0.1:1"}
    done = subprocess.run([sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "MODELFLEET_EVENT_LOOP='trio' is not an event loop; use uvloop (the default) or asyncio" in done.stderr

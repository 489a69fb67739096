"""`modelfleet up` as a user runs it: all healthy, a crashed child restarted, SIGTERM stops every process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from services.runtime.embedded import EmbeddedPostgres, free_port
from tests.harness.cli import BIN, stop_up, wait_up_healthy

pytestmark = pytest.mark.e2e


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:  # exited or a zombie not reaped yet
        return ""


def _postmaster_pid(state: Path) -> int:
    data_dir = EmbeddedPostgres(state / "postgres" / "data").data_dir  # where `up` put this fleet's cluster
    pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    assert psutil.pid_exists(pid), "the embedded PostgreSQL is not running"
    return pid


def test_up_reaches_all_healthy_restarts_a_crashed_child_and_stops_cleanly(tmp_path: Path) -> None:
    state, port, log = tmp_path / "state", free_port(), tmp_path / "up.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELFLEET_", "OTEL_"))}
    env["MODELFLEET_URL"] = url = f"http://127.0.0.1:{port}"
    env["COLUMNS"] = "200"  # rich wraps long lines at the terminal width; keep the log greppable
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN), "up", "--state-dir", str(state), "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        started = time.monotonic()
        body = wait_up_healthy(url, 60, proc, log)
        print(f"all-healthy after {time.monotonic() - started:.1f}s")
        assert set(body["services"]) == {"catalog", "provisioner", "hardware-probe", "router", "inference-fallback"}
        assert all(s["status"] == "up" for s in body["services"].values())

        status = subprocess.run([str(BIN), "status", "--json"], env=env, capture_output=True, timeout=30)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["status"] == "ok"

        # no admin token was given: `up` made one, kept it for its owner only, named where and not what it is
        kept = state / "admin-token"
        token = kept.read_text().strip()
        assert len(token) >= 40 and kept.stat().st_mode & 0o777 == 0o600
        assert f"admin token: in {kept}" in log.read_text() and token not in log.read_text()
        admin_only = httpx.get(
            f"{url}/api/v1/provision/audit", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert admin_only.status_code == 200, admin_only.text
        assert httpx.get(f"{url}/api/v1/provision/audit", timeout=10).status_code == 401
        # the CLI on this machine finds it in the state dir; only the gateway process was handed it
        cli_env = {**env, "MODELFLEET_STATE_DIR": str(state)}
        audit = subprocess.run([str(BIN), "provision", "audit", "--json"], env=cli_env, capture_output=True, timeout=30)
        assert audit.returncode == 0, audit.stderr
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                given = child.environ().get("MODELFLEET_ADMIN_TOKEN")
            except psutil.Error:
                continue
            assert given is None or "services.gateway" in _cmdline(child), _cmdline(child)

        children = psutil.Process(proc.pid).children(recursive=True)
        spawned = {p.pid for p in children} | {_postmaster_pid(state)}
        router = next(p for p in children if "services.router" in _cmdline(p))
        router.kill()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            again = [
                p
                for p in psutil.Process(proc.pid).children()
                if "services.router" in _cmdline(p) and p.pid != router.pid
            ]
            if again:
                break
            time.sleep(0.2)
        assert again, f"crashed router was not restarted:\n{log.read_text()}"
        spawned |= {p.pid for p in again}
        wait_up_healthy(url, 30, proc, log)
        assert "router exited" in log.read_text()

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(40) == 0, log.read_text()
        assert "stopped cleanly" in log.read_text()
        survivors = [pid for pid in spawned if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
        assert survivors == [], f"processes left behind: {[(pid, _cmdline(psutil.Process(pid))) for pid in survivors]}"
    finally:
        stop_up(proc)


def test_up_with_the_router_in_the_gateway_runs_no_router_process(tmp_path: Path) -> None:
    """`--router-in-gateway`: the gateway's process hosts the router replica, which answers the fleet's health as the
    router; no router process runs; SIGTERM still stops everything."""
    state, port, log = tmp_path / "state", free_port(), tmp_path / "up.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELFLEET_", "OTEL_"))}
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN), "up", "--state-dir", str(state), "--port", str(port), "--no-metrics", "--router-in-gateway"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        body = wait_up_healthy(url, 60, proc, log)
        assert body["services"]["router"]["status"] == "up"  # type: ignore[index]
        children = psutil.Process(proc.pid).children(recursive=True)
        lines = [_cmdline(p) for p in children]
        assert not [c for c in lines if "services.router" in c], lines
        assert [c for c in lines if c.endswith("-m services.gateway_router")], lines
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(40) == 0, log.read_text()
        assert "stopped cleanly" in log.read_text()
    finally:
        stop_up(proc)


def test_status_fails_when_no_gateway_answers(tmp_path: Path) -> None:
    env = dict(os.environ, MODELFLEET_URL=f"http://127.0.0.1:{free_port()}")
    r = subprocess.run([str(BIN), "status"], env=env, capture_output=True, timeout=30)
    assert r.returncode == 2
    assert b"cannot reach the gateway" in r.stderr

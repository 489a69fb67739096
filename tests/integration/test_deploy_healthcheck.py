"""`deploy/healthcheck.py`, the container health check of compose and k8s, against real service processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def healthcheck(service: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MODELFLEET_", "OTEL_"))}
    return subprocess.run(
        [sys.executable, "deploy/healthcheck.py", service],
        cwd=ROOT,
        env={**clean, "MODELFLEET_HEALTHCHECK_TIMEOUT_S": "2", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


async def test_healthy_only_for_this_replicas_own_host_id(
    nats_url: str, service_env: Callable[..., dict[str, str]], start_service: Callable[..., object], tmp_path: Path
) -> None:
    await start_service("router", service_env(MODELFLEET_HOST_ID="replica-a"))  # type: ignore[operator]
    ok = healthcheck("router", {"MODELFLEET_NATS_URL": nats_url, "MODELFLEET_HOST_ID": "replica-a"})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "router: healthy" in ok.stdout
    # Another replica's healthy answer must not make this container look healthy.
    other = healthcheck("router", {"MODELFLEET_NATS_URL": nats_url, "MODELFLEET_HOST_ID": "replica-b"})
    assert other.returncode == 1 and "no health reply from host replica-b" in other.stdout
    silent = healthcheck("catalog", {"MODELFLEET_NATS_URL": nats_url, "MODELFLEET_HOST_ID": "replica-a"})
    assert silent.returncode == 1 and "UNHEALTHY" in silent.stdout


async def test_host_id_is_read_from_the_state_dir_the_service_minted(
    nats_url: str, service_env: Callable[..., dict[str, str]], start_service: Callable[..., object], tmp_path: Path
) -> None:
    state = tmp_path / "minted"
    before = healthcheck("router", {"MODELFLEET_NATS_URL": nats_url, "MODELFLEET_STATE_DIR": str(state)})
    assert before.returncode == 1 and "not started" in before.stdout
    assert not (state / "host-id").exists(), "the check must only read the state dir, never mint an id"
    env = service_env(MODELFLEET_STATE_DIR=str(state))
    del env["MODELFLEET_HOST_ID"]
    await start_service("router", env)  # type: ignore[operator]
    assert (state / "host-id").is_file()
    after = healthcheck("router", {"MODELFLEET_NATS_URL": nats_url, "MODELFLEET_STATE_DIR": str(state)})
    assert after.returncode == 0, after.stdout + after.stderr


def test_unreachable_nats_is_unhealthy_not_a_crash(tmp_path: Path) -> None:
    result = healthcheck("router", {"MODELFLEET_NATS_URL": "nats://127.0.0.1:1", "MODELFLEET_HOST_ID": "h"})
    assert result.returncode == 1 and "UNHEALTHY" in result.stdout


async def test_gateway_is_checked_on_healthz(
    service_env: Callable[..., dict[str, str]], start_gateway: Callable[..., object]
) -> None:
    url = await start_gateway(service_env())  # type: ignore[operator]
    port = str(urlsplit(str(url)).port)
    result = healthcheck("gateway", {"MODELFLEET_GATEWAY_PORT": port})
    assert result.returncode == 0 and "HTTP 200" in result.stdout, result.stdout + result.stderr


def test_usage_error() -> None:
    assert healthcheck("", {"MODELFLEET_HOST_ID": "h"}).returncode == 1  # not a subject token
    result = subprocess.run([sys.executable, "deploy/healthcheck.py"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "usage" in result.stderr

"""The probe daemon loses NATS mid-run: it stays up, and its samples resume in the stream and the KV bucket."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import nats
import pytest

from contracts.hardware import HOSTS_BUCKET, GpuSampled
from services.runtime.embedded import EmbeddedNats, free_port
from tests.harness.no_gpu import no_gpu_env
from tests.harness.processes import ServiceProcess

pytestmark = pytest.mark.chaos


async def latest(url: str) -> GpuSampled | None:
    try:
        nc = await nats.connect(url, connect_timeout=1, max_reconnect_attempts=0)
    except Exception:
        return None
    try:
        entry = await (await nc.jetstream().key_value(HOSTS_BUCKET)).get("chaos-host")
        return GpuSampled.model_validate_json(entry.value) if entry.value else None
    except Exception:
        return None
    finally:
        await nc.close()


async def until_sample_after(url: str, moment: datetime, proc: ServiceProcess, timeout_s: float) -> GpuSampled:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.proc is not None and proc.proc.poll() is None, f"probe exited:\n{proc.log_tail()}"
        sample = await latest(url)
        if sample is not None and sample.occurred_at > moment:
            return sample
        await asyncio.sleep(0.1)
    raise AssertionError(f"no sample after {moment} within {timeout_s}s:\n{proc.log_tail()}")


async def test_probe_survives_a_nats_restart(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats", port=free_port()).start()
    env = {
        "MODELFLEET_NATS_URL": server.url, "MODELFLEET_STATE_DIR": str(tmp_path / "state"),
        "MODELFLEET_HOST_ID": "chaos-host", "MODELFLEET_PROBE_INTERVAL_S": "0.2", "MODELFLEET_RETRY_MAX_S": "0.5",
        "MODELFLEET_OLLAMA_URL": "http://127.0.0.1:1", **no_gpu_env(),
    }  # fmt: skip
    proc = ServiceProcess("hardware-probe", env, tmp_path / "probe.log").start()
    try:
        await until_sample_after(server.url, datetime(2000, 1, 1, tzinfo=UTC), proc, 30)
        server.stop()
        await asyncio.sleep(1.5)  # samples fail to publish meanwhile; the daemon must not exit
        assert proc.proc is not None and proc.proc.poll() is None, proc.log_tail()
        server.start()  # same port, same JetStream store: streams and the bucket come back
        restarted = datetime.now(UTC)
        sample = await until_sample_after(server.url, restarted, proc, 30)
        assert sample.host_id == "chaos-host" and not sample.has_gpu
    finally:
        proc.stop()
        server.stop()

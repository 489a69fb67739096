"""The hardware-probe daemon against real NATS (JetStream + KV) and the project's Ollama peer.

The real process on this GPU-less machine reports `has_gpu: false` with the reason; the GPU path runs the
same Service in-process with an NVML stand-in injected at services.runtime.nvml.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import nats
import ollama
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from contracts.hardware import HOSTS_BUCKET, GpuSampled, HostHeartbeat, SampleRequest
from contracts.rpc import RPC_HEADER, ErrorReply
from contracts.subjects import EVENTS_STREAM, fill
from services.hardware_probe.app import build_app
from services.hardware_probe.host_stats import HostStats
from services.hardware_probe.ollama_status import OllamaStatus
from services.hardware_probe.sampler import Sampler
from services.hardware_probe.settings import HardwareProbeSettings
from services.hardware_probe.torch_stats import TorchStats
from services.runtime.embedded import free_port
from services.runtime.kv_scan import last_entries
from services.runtime.nvml import NvmlReader
from tests.harness.no_gpu import no_gpu_env
from tests.harness.nvml_stand_in import GIB, stand_in, two_gpus
from tests.harness.processes import ROOT
from tests.harness.waiting import eventually
from tests.peers.ollama_server import OllamaPeer

pytestmark = pytest.mark.integration

T = TypeVar("T")


async def events(js: Any, subject: str, since_seq: int = 0) -> list[Any]:
    """The messages of `subject` in EVENTS (from `since_seq`) up to the moment of reading (the daemon keeps adding)."""
    policy = dict(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=since_seq) if since_seq else {}
    sub = await js.pull_subscribe(subject, stream=EVENTS_STREAM, config=ConsumerConfig(**policy))
    out: list[Any] = []
    try:
        for _ in range(100):
            try:
                batch = await sub.fetch(100, timeout=0.3)
            except TimeoutError:
                break
            out.extend(batch)
            if batch[-1].metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return out


async def kv_sample(js: Any, host_id: str) -> GpuSampled | None:
    entry = await (await js.key_value(HOSTS_BUCKET)).get(host_id)
    return GpuSampled.model_validate_json(entry.value) if entry.value else None


@contextmanager
def ollama_peer_process() -> Iterator[str]:
    """The Ollama peer in its own process, so that killing it drops every connection as a real Ollama's exit does."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.peers.ollama_server", "--port", str(port), "--model", "llama3.2:1b"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{url}/api/version", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        client = ollama.Client(host=url)
        client.pull("llama3.2:1b")
        client.chat(model="llama3.2:1b", messages=[{"role": "user", "content": "hi"}])  # loads it: /api/ps lists it
        yield url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


async def test_daemon_publishes_samples_heartbeats_and_kv_without_a_gpu(
    service_env: Callable[..., dict[str, str]], start_service: Callable[..., Any], nats_url: str
) -> None:
    with ollama_peer_process() as ollama_url:
        env = service_env(MODELFLEET_PROBE_INTERVAL_S="0.3", MODELFLEET_OLLAMA_URL=ollama_url, **no_gpu_env())
        await start_service("hardware-probe", env)
        nc = await nats.connect(nats_url)
        try:
            await _follow_daemon(nc.jetstream(), nc)
        finally:
            await nc.close()


async def _follow_daemon(js: Any, nc: Any) -> None:
    latest = await eventually(lambda: kv_sample(js, "test-host"), what="the hosts KV entry")
    assert latest.host_id == "test-host" and latest.producer == "hardware-probe"
    assert latest.has_gpu is False and latest.gpus == []
    assert latest.no_gpu_reason and "NVML" in latest.no_gpu_reason
    assert latest.ollama_reachable and [m.name for m in latest.ollama_models] == ["llama3.2:1b"]
    assert latest.cpu_logical_cores >= 1 and latest.memory_total_bytes > 0 and latest.disk_free_bytes

    samples = await eventually(lambda: _at_least(events(js, GpuSampled.SUBJECT), 3), what="three gpu.sampled events")
    ids = [GpuSampled.model_validate_json(m.data).event_id for m in samples]
    assert len(set(ids)) == len(ids)
    assert all(m.headers["Nats-Msg-Id"] == str(i) for m, i in zip(samples, ids, strict=True))
    beats = [HostHeartbeat.model_validate_json(m.data) for m in await events(js, HostHeartbeat.SUBJECT)]
    assert beats and all(b.host_id == "test-host" and b.has_gpu is False for b in beats)

    subject = fill(SampleRequest.SUBJECT, host="test-host")
    reply = await nc.request(subject, b"{}", timeout=5)
    fresh = GpuSampled.model_validate_json(reply.data)
    assert fresh.host_id == "test-host" and fresh.event_id not in ids
    refused = await nc.request(subject, b"not json", timeout=5)  # the seam's typed 422, not a silent timeout
    assert refused.headers == {RPC_HEADER: "error"}
    assert ErrorReply.model_validate_json(refused.data).error.status == 422


async def test_daemon_outlives_its_ollama(
    service_env: Callable[..., dict[str, str]], start_service: Callable[..., Any], nats_url: str
) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        with ollama_peer_process() as ollama_url:
            env = service_env(MODELFLEET_PROBE_INTERVAL_S="0.3", MODELFLEET_OLLAMA_URL=ollama_url, **no_gpu_env())
            probe = await start_service("hardware-probe", env)

            async def reachable() -> bool:
                s = await kv_sample(js, "test-host")
                return s is not None and s.ollama_reachable

            await eventually(reachable, what="a sample with Ollama reachable")

        # the peer process is gone: the daemon keeps sampling and says why
        async def unreachable() -> GpuSampled | None:
            s = await kv_sample(js, "test-host")
            return s if s is not None and not s.ollama_reachable else None

        down = await eventually(unreachable, what="a sample reporting Ollama unreachable")
        assert down.ollama_error and down.ollama_models == []
        assert probe.proc is not None and probe.proc.poll() is None
    finally:
        await nc.close()


async def _at_least(fetch: Awaitable[list[Any]], n: int) -> list[Any] | None:
    got = await fetch
    return got if len(got) >= n else None


async def test_host_id_is_stable_across_restarts(
    service_env: Callable[..., dict[str, str]], start_service: Callable[..., Any], nats_url: str
) -> None:
    env = service_env(MODELFLEET_PROBE_INTERVAL_S="0.3", MODELFLEET_OLLAMA_URL="http://127.0.0.1:1", **no_gpu_env())
    env["MODELFLEET_HOST_ID"] = ""  # not configured: minted once, kept in the state dir
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()

        async def keys() -> list[str] | None:
            # Not kv.keys(): nats-py's watcher may mark the end before the first key (services/runtime/kv_scan.py).
            return [e.key for e in await last_entries(js, HOSTS_BUCKET, 5.0)] or None

        first = await start_service("hardware-probe", env)
        [host_id] = await eventually(keys, what="a host key")
        assert (Path(env["MODELFLEET_STATE_DIR"]) / "host-id").read_text().strip() == host_id
        first.stop()
        before = (await kv_sample(js, host_id)).event_id  # type: ignore[union-attr]
        await start_service("hardware-probe", env)

        async def newer() -> bool:
            s = await kv_sample(js, host_id)
            return s is not None and s.event_id != before

        await eventually(newer, what="a sample from the restarted daemon")
        assert await keys() == [host_id]
    finally:
        await nc.close()


async def test_gpu_path_publishes_devices_to_real_nats(nats_url: str, tmp_path: Path) -> None:
    settings = HardwareProbeSettings(
        nats_url=nats_url, state_dir=tmp_path, host_id="gpu-host", interval_s=0.2, ollama_url="http://127.0.0.1:1"
    )
    fake = stand_in(two_gpus())
    service = build_app(settings, nvml=NvmlReader(fake))
    await service.start()
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        sample = await eventually(lambda: kv_sample(js, "gpu-host"), what="the GPU host's KV entry")
        assert sample.has_gpu and sample.no_gpu_reason is None and sample.nvml_driver_version == "570.86.15"
        assert [g.name for g in sample.gpus] == ["NVIDIA H200", "NVIDIA RTX 4090"]
        assert sample.gpus[0].processes[0].used_memory_bytes == 18 * GIB
        beats = [HostHeartbeat.model_validate_json(m.data) for m in await events(js, HostHeartbeat.SUBJECT)]
        assert beats and beats[-1].gpu_count == 2 and beats[-1].gpu_free_bytes == 121 * GIB
        # NVML dies mid-run: samples keep coming, now without GPUs and with the reason
        fake.state["count_error"] = fake.NVMLError("GPU has fallen off the bus")

        async def lost() -> bool:
            s = await kv_sample(js, "gpu-host")
            return s is not None and not s.has_gpu and "fallen off the bus" in (s.no_gpu_reason or "")

        await eventually(lost, what="a sample reporting the lost GPU")
    finally:
        await nc.close()
        await service.stop()


async def test_sampler_with_gpus_and_ollama_peer(tmp_path: Path) -> None:
    with OllamaPeer() as peer:
        peer.install("qwen3:8b", size=5 * GIB)
        peer.loaded.add("qwen3:8b")
        sampler = Sampler(
            "gpu-host", HostStats(tmp_path / "models"), NvmlReader(stand_in(two_gpus())),
            OllamaStatus(peer.url), TorchStats(False), 2.0,
        )  # fmt: skip
        try:
            sample = await sampler.sample()
        finally:
            await sampler.close()
    assert sample.has_gpu and len(sample.gpus) == 2 and sample.gpu_free_bytes() == 121 * GIB
    assert sample.ollama_reachable and sample.ollama_version
    [loaded] = sample.ollama_models
    assert loaded.name == "qwen3:8b" and loaded.size_bytes > 0
    assert sample.disk_free_bytes and sample.models_dir == str(tmp_path / "models")
    json.loads(sample.model_dump_json())  # what goes on the bus and into the KV bucket


async def test_ollama_down_is_a_reading_not_an_error() -> None:
    status = OllamaStatus("http://127.0.0.1:1", timeout_s=0.5)
    try:
        r = await status.read()
    finally:
        await status.close()
    assert not r.reachable and r.error and "ConnectionError" in r.error

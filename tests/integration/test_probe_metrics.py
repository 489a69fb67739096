"""The probe process's `/metrics`: the last sample's GPUs (the NVML stand-in's two devices, in a real process),
host RAM and disk, and Ollama's loaded models from the Ollama peer, scraped over HTTP as Prometheus does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.harness.metrics import Samples, free_port, scrape_async
from tests.harness.nvml_stand_in import GIB
from tests.harness.two_gpus import two_gpus_env
from tests.harness.waiting import eventually
from tests.peers.ollama_server import OllamaPeer

pytestmark = pytest.mark.integration

H200 = {"hw_id": "GPU-NVIDIA H200", "hw_name": "NVIDIA H200", "modelfleet_gpu_index": "0", "host_id": "test-host"}
RTX = {
    "hw_id": "GPU-NVIDIA RTX 4090",
    "hw_name": "NVIDIA RTX 4090",
    "modelfleet_gpu_index": "1",
    "host_id": "test-host",
}


async def test_probe_serves_gpu_host_and_ollama_series(
    service_env: Callable[..., dict[str, str]], start_service: Callable[..., Any]
) -> None:
    port = free_port()
    with OllamaPeer() as peer:
        peer.install("qwen3:8b", size=5 * GIB)
        peer.loaded.add("qwen3:8b")
        env = service_env(
            MODELFLEET_PROBE_INTERVAL_S="0.3",
            MODELFLEET_OLLAMA_URL=peer.url,
            MODELFLEET_METRICS_PORT=str(port),
            **two_gpus_env(),
        )
        await start_service("hardware-probe", env)
        url = f"http://127.0.0.1:{port}/metrics"

        async def sampled_twice() -> Samples | None:
            got = await scrape_async(url)
            samples = got.value("modelfleet_probe_sample_duration_seconds_count", host_id="test-host")
            return got if samples >= 2 else None

        m = await eventually(sampled_twice, what="two samples counted on /metrics")

    # per GPU, by NVML UUID, name and index: the stand-in's figures
    assert m.value("hw_gpu_memory_usage_bytes", **H200) == 20 * GIB
    assert m.value("hw_gpu_memory_limit_bytes", **H200) == 141 * GIB
    assert m.value("hw_gpu_memory_usage_bytes", **RTX) == 23 * GIB
    assert m.value("hw_gpu_memory_limit_bytes", **RTX) == 24 * GIB
    assert m.value("hw_gpu_utilization", **H200) == pytest.approx(0.40)
    assert m.value("hw_temperature_celsius", hw_type="gpu", **H200) == 61
    assert m.value("hw_power_watts", hw_type="gpu", **H200) == 215
    assert not m.find("hw_power_watts", **RTX)  # NVML does not report its power: no series, not a zero
    assert m.value("modelfleet_probe_gpus", host_id="test-host") == 2

    # the host
    used = m.value("system_memory_usage_bytes", system_memory_state="used")
    free = m.value("system_memory_usage_bytes", system_memory_state="free")
    assert used > 0 and free > 0 and used + free == m.value("system_memory_limit_bytes", host_id="test-host")
    assert m.value("system_filesystem_limit_bytes") > 0
    assert m.value("system_filesystem_usage_bytes", system_filesystem_state="free") > 0
    assert 0 <= m.value("system_cpu_utilization") <= 1

    # the host's Ollama (the peer's /api/ps)
    assert m.value("modelfleet_probe_ollama_up", host_id="test-host") == 1
    assert m.value("modelfleet_probe_ollama_models_loaded", host_id="test-host") == 1
    assert m.value("modelfleet_probe_ollama_model_size_bytes", modelfleet_ollama_model="qwen3:8b") >= 5 * GIB
    assert m.value("modelfleet_probe_ollama_model_vram_bytes", modelfleet_ollama_model="qwen3:8b") > 0
    assert m.value("modelfleet_probe_sample_duration_seconds_sum") > 0

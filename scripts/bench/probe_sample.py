"""CPU time of one hardware-probe sample (goal: cpu_ms < 5), with the bare psutil reads as the baseline.

    python -m scripts.bench.probe_sample

`cpu_ms`: one full GpuSampled (psutil + NVML + contract) with no Ollama configured; `cpu_ms_ollama` adds
/api/ps + /api/version against the Ollama peer running in its own process (its CPU is not counted);
`cpu_ms_ollama_refused` against an Ollama that refuses the connection; `cpu_ms_two_gpus` reads two devices through
the NVML stand-in the tests use (no GPU here); `baseline_cpu_ms`: HostStats.read() alone.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from services.hardware_probe.host_stats import HostStats
from services.hardware_probe.ollama_status import OllamaStatus
from services.hardware_probe.sampler import Sampler
from services.hardware_probe.torch_stats import TorchStats
from services.runtime.embedded import free_port, port_open
from services.runtime.nvml import NvmlReader
from tests.harness.nvml_stand_in import stand_in, two_gpus

RUNS = 300


async def cpu_ms(fn: Callable[[], Awaitable[object]], runs: int = RUNS) -> float:
    await fn()  # warm: first NVML init, first connection
    started = time.process_time()
    for _ in range(runs):
        await fn()
    return round((time.process_time() - started) * 1000 / runs, 4)


async def main(ollama_port: int) -> dict[str, object]:
    models = Path(tempfile.gettempdir())
    host = HostStats(models)

    async def bare() -> object:
        return host.read()

    plain = Sampler("bench", host, NvmlReader(), None, TorchStats(False), 5.0)
    gpus = Sampler("bench", host, NvmlReader(stand_in(two_gpus())), None, TorchStats(False), 5.0)
    url = f"http://127.0.0.1:{ollama_port}"
    live = Sampler("bench", host, NvmlReader(), OllamaStatus(url), TorchStats(False), 5.0)
    with_ollama = await cpu_ms(live.sample, runs=100)
    reachable = (await live.sample()).ollama_reachable
    refused = Sampler("bench", host, NvmlReader(), OllamaStatus("http://127.0.0.1:1", 1.0), TorchStats(False), 5.0)
    result: dict[str, object] = {
        "cpu_ms": await cpu_ms(plain.sample),
        "cpu_ms_two_gpus": await cpu_ms(gpus.sample),
        "cpu_ms_ollama": with_ollama,
        "ollama_reachable": reachable,
        "cpu_ms_ollama_refused": await cpu_ms(refused.sample, runs=100),
        "baseline_cpu_ms": await cpu_ms(bare),
        "no_gpu_reason": (await plain.sample()).no_gpu_reason,
        "runs": RUNS,
        "goal": {"cpu_ms_below": 5},
    }
    for s in (plain, gpus, live, refused):
        await s.close()
    return result


if __name__ == "__main__":
    port = free_port()
    # the Ollama peer in its own process, so its CPU time is not counted as the probe's
    peer = subprocess.Popen([sys.executable, "-m", "tests.peers.ollama_server", "--port", str(port)])
    try:
        deadline = time.monotonic() + 15
        while not port_open(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        figures = asyncio.run(main(port))
    finally:
        peer.kill()
        peer.wait(5)
    print(f"one sample: {figures['cpu_ms']} ms CPU (psutil alone {figures['baseline_cpu_ms']} ms)")
    print(json.dumps(figures))

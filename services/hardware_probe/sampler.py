"""One sample of this host: CPU, memory, disk, NVML devices, torch figures and inference backends, as a GpuSampled."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict

from contracts.hardware import BackendStatus, GpuSampled
from services.hardware_probe import domain
from services.hardware_probe.host_stats import HostStats
from services.hardware_probe.metrics import SAMPLE_DURATION
from services.hardware_probe.ollama_status import OllamaReading, OllamaStatus
from services.hardware_probe.openai_backends import OpenAIBackends
from services.hardware_probe.torch_stats import TorchStats
from services.runtime.nvml import NvmlReader

PRODUCER = "hardware-probe"


class Sampler:
    def __init__(
        self, host_id: str, host: HostStats, nvml: NvmlReader, ollama: OllamaStatus | None, torch: TorchStats,
        interval_s: float, openai: OpenAIBackends | None = None,
    ):  # fmt: skip
        self.host_id = host_id
        self.host = host
        self.nvml = nvml
        self.ollama = ollama
        self.torch = torch
        self.interval_s = interval_s
        self.openai = openai
        #: The latest sample taken (on the timer or asked for): what the metrics' gauges read.
        self.last: GpuSampled | None = None

    async def _backends(self) -> tuple[OllamaReading | None, list[BackendStatus]]:
        """Ollama and every OpenAI-compatible server at once: a sample waits for the slowest, never for the sum."""
        if self.openai is None:  # the common case: no task to spawn
            return (await self.ollama.read() if self.ollama is not None else None), []
        if self.ollama is None:
            return None, await self.openai.read()
        return await asyncio.gather(self.ollama.read(), self.openai.read())

    async def sample(self) -> GpuSampled:
        started = time.perf_counter()
        gpu = self.nvml.read()
        host = self.host.read()
        devices = gpu.devices
        if gpu.has_gpu and self.torch.enabled:
            figures = {i: (d.allocated_bytes, d.reserved_bytes) for i, d in self.torch.read().items()}
            devices = domain.with_torch(devices, figures)
        ollama, openai = await self._backends()
        backends = [ollama.status(self.ollama.url)] if ollama is not None and self.ollama is not None else []
        spent = time.perf_counter() - started
        self.last = GpuSampled(
            producer=PRODUCER, host=self.host_id, host_id=self.host_id, has_gpu=gpu.has_gpu, no_gpu_reason=gpu.reason,
            gpus=devices, nvml_driver_version=gpu.driver_version, torch_version=self.torch.version,
            ollama_url=self.ollama.url if self.ollama else None, ollama_reachable=bool(ollama and ollama.reachable),
            ollama_version=ollama.version if ollama else None, ollama_error=ollama.error if ollama else None,
            ollama_models=ollama.models if ollama else [], backends=[*backends, *openai], interval_s=self.interval_s,
            sample_ms=round(spent * 1000, 3), **asdict(host),
        )  # fmt: skip
        SAMPLE_DURATION.record(spent, {"host.id": self.host_id})
        return self.last

    async def close(self) -> None:
        self.nvml.close()
        if self.ollama is not None:
            await self.ollama.close()
        if self.openai is not None:
            await self.openai.close()

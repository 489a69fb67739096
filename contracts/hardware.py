"""Hardware facts a probe daemon publishes for its host."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field, StringConstraints

from contracts.envelope import Contract, Envelope, HostId
from contracts.router import BackendKind
from contracts.rpc import RpcRequest

Text = Annotated[str, StringConstraints(max_length=1024)]

#: JetStream key-value bucket holding each host's latest GpuSampled (key = host id); history is in EVENTS.
HOSTS_BUCKET = "hosts"


class GpuProcess(Contract):
    """A process holding memory on a device (NVML's compute and graphics process lists)."""

    pid: int = Field(ge=0)
    used_memory_bytes: int | None = Field(default=None, ge=0)
    name: Text | None = None


class GpuDevice(Contract):
    """One NVIDIA device as NVML reports it."""

    index: int = Field(ge=0)
    name: Text
    uuid: Text
    memory_total_bytes: int = Field(ge=0)
    memory_free_bytes: int = Field(ge=0)
    memory_used_bytes: int = Field(ge=0)
    utilization_percent: float | None = Field(default=None, ge=0, le=100)
    temperature_c: float | None = None
    power_w: float | None = Field(default=None, ge=0)
    power_limit_w: float | None = Field(default=None, ge=0)
    processes: list[GpuProcess] = Field(default_factory=list)
    torch_allocated_bytes: int | None = Field(
        default=None, ge=0, description="torch's caching allocator in the probe process (None without torch/CUDA)"
    )
    torch_reserved_bytes: int | None = Field(default=None, ge=0)


class OllamaLoadedModel(Contract):
    """One entry of Ollama's /api/ps: a model held in memory."""

    name: Text
    model: Text | None = None
    digest: Text | None = None
    size_bytes: int = Field(default=0, ge=0)
    size_vram_bytes: int = Field(default=0, ge=0)
    expires_at: datetime | None = None
    context_length: int | None = Field(default=None, ge=0)


class BackendModel(Contract):
    """A model a backend has: Ollama's /api/tags; for an OpenAI-compatible server, an entry of GET <base>/models."""

    name: Text
    size_bytes: int | None = Field(default=None, ge=0)
    digest: Text | None = None


class BackendLoadedModel(Contract):
    """A model a backend serves now: Ollama's /api/ps; for an OpenAI-compatible server, an entry of its /models."""

    name: Text
    size_bytes: int | None = Field(default=None, ge=0)
    size_vram_bytes: int | None = Field(default=None, ge=0)
    context_length: int | None = Field(default=None, ge=0)
    expires_at: datetime | None = None


class BackendStatus(Contract):
    """One inference backend on the host as its probe saw it: the host's Ollama or an OpenAI-compatible server."""

    kind: BackendKind
    base_url: Text = Field(description="Ollama's URL, or an OpenAI-compatible server's base URL ending in /v1")
    reachable: bool
    error: Text | None = None
    version: Text | None = None
    installed: list[BackendModel] = Field(default_factory=list)
    loaded: list[BackendLoadedModel] = Field(default_factory=list)


class GpuSampled(Envelope):
    SUBJECT = "evt.hardware.gpu.sampled.v1"

    host_id: HostId
    has_gpu: bool
    no_gpu_reason: Text | None = None
    gpus: list[GpuDevice] = Field(default_factory=list)
    cpu_logical_cores: int = Field(ge=1)
    memory_total_bytes: int = Field(ge=0)
    memory_available_bytes: int = Field(ge=0)
    ollama_url: Text | None = None
    ollama_reachable: bool = False
    # Added in 0.1 (optional, so the major version holds):
    cpu_physical_cores: int | None = Field(default=None, ge=1)
    cpu_frequency_mhz: float | None = Field(default=None, ge=0)
    cpu_load_percent: float | None = Field(default=None, ge=0, le=100)
    load_average: list[float] = Field(default_factory=list, description="1, 5 and 15 minute load averages")
    memory_percent_used: float | None = Field(default=None, ge=0, le=100)
    models_dir: Text | None = None
    disk_total_bytes: int | None = Field(default=None, ge=0)
    disk_free_bytes: int | None = Field(default=None, ge=0)
    nvml_driver_version: Text | None = None
    torch_version: Text | None = None
    ollama_version: Text | None = None
    ollama_error: Text | None = None
    ollama_models: list[OllamaLoadedModel] = Field(default_factory=list)
    interval_s: float | None = Field(default=None, gt=0)
    sample_ms: float | None = Field(default=None, ge=0, description="wall time the probe spent taking this sample")
    backends: list[BackendStatus] = Field(
        default_factory=list,
        description="The host's inference backends (its Ollama first, then MODELFLEET_OPENAI_BACKENDS in order); "
        "empty from a probe that predates the list",
    )

    def gpu_free_bytes(self) -> int:
        """Free memory of the device with the most of it (0 without a GPU): where a model would be placed."""
        return max((g.memory_free_bytes for g in self.gpus), default=0)


class HostHeartbeat(Envelope):
    SUBJECT = "evt.hardware.host.heartbeat.v1"

    host_id: HostId
    interval_s: float = Field(gt=0)
    ollama_url: Text | None = None
    ollama_reachable: bool = False
    has_gpu: bool | None = None
    gpu_count: int | None = Field(default=None, ge=0)
    gpu_free_bytes: int | None = Field(default=None, ge=0)


class SampleRequest(RpcRequest[GpuSampled]):
    """Ask one host's probe for a fresh sample (rpc.probe.<host>.sample.v1); the reply is a GpuSampled."""

    SUBJECT = "rpc.probe.{host}.sample.v1"

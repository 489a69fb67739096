"""Hardware facts a probe daemon publishes for its host."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from contracts.envelope import Contract, Envelope, HostId

Text = Annotated[str, StringConstraints(max_length=1024)]

#: JetStream key-value bucket holding each host's latest GpuSampled (key = host id); history is in EVENTS.
HOSTS_BUCKET = "hosts"


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


class HostHeartbeat(Envelope):
    SUBJECT = "evt.hardware.host.heartbeat.v1"

    host_id: HostId
    interval_s: float = Field(gt=0)
    ollama_url: Text | None = None
    ollama_reachable: bool = False

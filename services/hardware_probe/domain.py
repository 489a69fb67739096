"""Probe decisions, free of IO: the schedule of samples and what a heartbeat says about a sample."""

from __future__ import annotations

from contracts.hardware import GpuDevice, GpuSampled, HostHeartbeat


def next_delay(interval_s: float, spent_s: float) -> float:
    """Keep a steady cadence: a slow sample shortens the wait, never below zero."""
    return max(0.0, interval_s - spent_s)


def with_torch(devices: list[GpuDevice], torch: dict[int, tuple[int, int]]) -> list[GpuDevice]:
    """Attach torch's (allocated, reserved) bytes to the NVML device of the same index."""
    if not torch:
        return devices
    return [
        d.model_copy(update={"torch_allocated_bytes": torch[d.index][0], "torch_reserved_bytes": torch[d.index][1]})
        if d.index in torch
        else d
        for d in devices
    ]


def heartbeat(sample: GpuSampled, interval_s: float) -> HostHeartbeat:
    """The small liveness fact the router follows, summarised from the full sample."""
    return HostHeartbeat(
        producer=sample.producer, host=sample.host, correlation_id=sample.event_id, host_id=sample.host_id,
        interval_s=interval_s, ollama_url=sample.ollama_url, ollama_reachable=sample.ollama_reachable,
        has_gpu=sample.has_gpu, gpu_count=len(sample.gpus), gpu_free_bytes=sample.gpu_free_bytes(),
    )  # fmt: skip

"""The probe's metrics (docs/observability.md, "Hardware probe"): the last sample, exposed through observable gauges
named by the OpenTelemetry semantic conventions for hardware (`hw.*`) and the system (`system.*`), plus the probe's
own `modelfleet.probe.*` series for Ollama and the sampling itself. Nothing is measured twice: a scrape reads what
the sampler last collected (every `MODELFLEET_PROBE_INTERVAL_S`)."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Protocol

from opentelemetry.metrics import CallbackOptions, Observation

from contracts.hardware import GpuDevice, GpuSampled
from services.runtime.metrics import meter

_meter = meter("modelfleet.hardware_probe")

SAMPLE_DURATION = _meter.create_histogram(
    "modelfleet.probe.sample.duration",
    unit="s",
    description="Time one sample took (NVML, host, Ollama and OpenAI-compatible backends); its count grows by one "
    "per sample, so a rate of zero is a probe that stopped sampling.",
)


class HasSample(Protocol):
    host_id: str
    last: GpuSampled | None


_samplers: weakref.WeakSet[HasSample] = weakref.WeakSet()


def watch(sampler: HasSample) -> None:
    """Let the gauges read this sampler's last sample."""
    _samplers.add(sampler)


def _latest() -> list[GpuSampled]:
    return [s.last for s in list(_samplers) if s.last is not None]


def _gpu(sample: GpuSampled, gpu: GpuDevice) -> dict[str, str | int]:
    return {"host.id": sample.host_id, "hw.id": gpu.uuid, "hw.name": gpu.name, "modelfleet.gpu.index": gpu.index}


def _per_gpu(value: Callable[[GpuDevice], float | None], **extra: str) -> Callable[..., Iterable[Observation]]:
    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        for sample in _latest():
            for gpu in sample.gpus:
                v = value(gpu)
                if v is not None:
                    yield Observation(v, {**_gpu(sample, gpu), **extra})

    return observe


def _per_host(
    value: Callable[[GpuSampled], Iterable[tuple[float, dict[str, str]]]],
) -> Callable[..., Iterable[Observation]]:
    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        for sample in _latest():
            for v, attributes in value(sample):
                yield Observation(v, {"host.id": sample.host_id, **attributes})

    return observe


def _ratio(percent: float | None) -> float | None:
    return None if percent is None else percent / 100.0


def _memory_used(s: GpuSampled) -> Iterable[tuple[float, dict[str, str]]]:
    yield s.memory_total_bytes - s.memory_available_bytes, {"system.memory.state": "used"}
    yield s.memory_available_bytes, {"system.memory.state": "free"}


def _disk(s: GpuSampled, used: bool) -> Iterable[tuple[float, dict[str, str]]]:
    if s.disk_total_bytes is None or s.disk_free_bytes is None:
        return
    where = {"modelfleet.models_dir": s.models_dir or ""}
    if used:
        yield s.disk_total_bytes - s.disk_free_bytes, {**where, "system.filesystem.state": "used"}
        yield s.disk_free_bytes, {**where, "system.filesystem.state": "free"}
    else:
        yield s.disk_total_bytes, where


def _ollama_loaded(s: GpuSampled, size: Callable[[int, int], int]) -> Iterable[tuple[float, dict[str, str]]]:
    for m in s.ollama_models:
        yield size(m.size_bytes, m.size_vram_bytes), {"modelfleet.ollama.model": m.name}


# GPU devices (NVML), semantic conventions `hw.gpu.*` and `hw.*` with hw.type=gpu
_meter.create_observable_up_down_counter(
    "hw.gpu.memory.usage", callbacks=[_per_gpu(lambda g: g.memory_used_bytes)], unit="By",
    description="GPU memory in use, per device (`hw.id` is the NVML UUID, `modelfleet.gpu.index` the NVML index).",
)  # fmt: skip
_meter.create_observable_up_down_counter(
    "hw.gpu.memory.limit", callbacks=[_per_gpu(lambda g: g.memory_total_bytes)], unit="By",
    description="GPU memory in total, per device.",
)  # fmt: skip
_meter.create_observable_gauge(
    "hw.gpu.utilization", callbacks=[_per_gpu(lambda g: _ratio(g.utilization_percent))], unit="1",
    description="Fraction of time the GPU was busy over NVML's last sample period (0 to 1).",
)  # fmt: skip
_meter.create_observable_gauge(
    "hw.temperature", callbacks=[_per_gpu(lambda g: g.temperature_c, **{"hw.type": "gpu"})], unit="Cel",
    description="GPU core temperature in degrees Celsius.",
)  # fmt: skip
_meter.create_observable_gauge(
    "hw.power", callbacks=[_per_gpu(lambda g: g.power_w, **{"hw.type": "gpu"})], unit="W",
    description="GPU power draw in watts (absent where NVML does not report it).",
)  # fmt: skip
_meter.create_observable_gauge(
    "modelfleet.probe.gpus", callbacks=[_per_host(lambda s: [(len(s.gpus), {})])], unit="{gpu}",
    description="GPUs NVML sees on the host (0 without a driver or GPU).",
)  # fmt: skip

# the host, semantic conventions `system.*`
_meter.create_observable_up_down_counter(
    "system.memory.usage", callbacks=[_per_host(_memory_used)], unit="By",
    description="Host RAM by `system.memory.state`: used (total minus available) and free (available).",
)  # fmt: skip
_meter.create_observable_up_down_counter(
    "system.memory.limit", callbacks=[_per_host(lambda s: [(s.memory_total_bytes, {})])], unit="By",
    description="Host RAM in total.",
)  # fmt: skip
_meter.create_observable_gauge(
    "system.cpu.utilization",
    callbacks=[_per_host(lambda s: [] if s.cpu_load_percent is None else [(s.cpu_load_percent / 100.0, {})])],
    unit="1", description="CPU busy fraction over the last sample interval, all cores together (0 to 1).",
)  # fmt: skip
_meter.create_observable_up_down_counter(
    "system.filesystem.usage", callbacks=[_per_host(lambda s: _disk(s, used=True))], unit="By",
    description="The filesystem holding the models directory (`modelfleet.models_dir`), used and free.",
)  # fmt: skip
_meter.create_observable_up_down_counter(
    "system.filesystem.limit", callbacks=[_per_host(lambda s: _disk(s, used=False))], unit="By",
    description="Size of the filesystem holding the models directory.",
)  # fmt: skip

# the host's Ollama
_meter.create_observable_gauge(
    "modelfleet.probe.ollama.up", callbacks=[_per_host(lambda s: [(int(s.ollama_reachable), {})])], unit="1",
    description="1 when the host's Ollama answered the last sample, else 0.",
)  # fmt: skip
_meter.create_observable_gauge(
    "modelfleet.probe.ollama.models.loaded", callbacks=[_per_host(lambda s: [(len(s.ollama_models), {})])],
    unit="{model}", description="Models Ollama holds in memory now (its /api/ps).",
)  # fmt: skip
_meter.create_observable_gauge(
    "modelfleet.probe.ollama.model.size",
    callbacks=[_per_host(lambda s: _ollama_loaded(s, lambda size, _vram: size))], unit="By",
    description="Memory each loaded Ollama model takes (`modelfleet.ollama.model`), GPU and CPU together.",
)  # fmt: skip
_meter.create_observable_gauge(
    "modelfleet.probe.ollama.model.vram",
    callbacks=[_per_host(lambda s: _ollama_loaded(s, lambda _size, vram: vram))], unit="By",
    description="The part of each loaded Ollama model held in GPU memory (`modelfleet.ollama.model`).",
)  # fmt: skip

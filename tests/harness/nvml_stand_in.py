"""An NVML stand-in: the pynvml calls services.runtime.nvml makes, with pynvml's error classes and value shapes.

Injected only at that one boundary (NvmlReader(stand_in(...))), since no GPU is on the test machines.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any

GIB = 1 << 30


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


@dataclass
class FakeGpu:
    name: str
    total: int
    used: int
    util: int = 40
    temp: int = 61
    power_mw: int | None = 215_000
    procs: list[tuple[int, int | None]] = field(default_factory=list)
    broken: bool = False


def stand_in(gpus: list[FakeGpu], *, init_error: Exception | None = None) -> Any:
    """A pynvml stand-in with the calls NvmlReader makes and pynvml's error classes and value shapes."""
    state: dict[str, Any] = {"inits": 0, "count_error": None}

    def init() -> None:
        state["inits"] += 1
        if init_error is not None:
            raise init_error

    def count() -> int:
        if state["count_error"] is not None:
            raise state["count_error"]
        return len(gpus)

    def handle(i: int) -> FakeGpu:
        if gpus[i].broken:
            raise NVMLError("Unknown Error")
        return gpus[i]

    def power(g: FakeGpu) -> int:
        if g.power_mw is None:
            raise NVMLError_NotSupported("Not Supported")
        return g.power_mw

    ns = types.SimpleNamespace(
        NVMLError=NVMLError, NVMLError_LibraryNotFound=NVMLError_LibraryNotFound, NVML_TEMPERATURE_GPU=0,
        nvmlInit=init, nvmlShutdown=lambda: None, nvmlDeviceGetCount=count,
        nvmlSystemGetDriverVersion=lambda: "570.86.15", nvmlDeviceGetHandleByIndex=handle,
        nvmlDeviceGetName=lambda g: g.name, nvmlDeviceGetUUID=lambda g: f"GPU-{g.name}",
        nvmlDeviceGetMemoryInfo=lambda g: types.SimpleNamespace(total=g.total, used=g.used, free=g.total - g.used),
        nvmlDeviceGetUtilizationRates=lambda g: types.SimpleNamespace(gpu=g.util, memory=10),
        nvmlDeviceGetTemperature=lambda g, sensor: g.temp, nvmlDeviceGetPowerUsage=power,
        nvmlDeviceGetEnforcedPowerLimit=lambda g: 300_000,
        nvmlDeviceGetComputeRunningProcesses=lambda g: [
            types.SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in g.procs
        ],
        nvmlDeviceGetGraphicsRunningProcesses=lambda g: [],
        state=state,
    )  # fmt: skip
    return ns


def two_gpus() -> list[FakeGpu]:
    return [
        FakeGpu("NVIDIA H200", 141 * GIB, 20 * GIB, procs=[(4242, 18 * GIB), (4343, None)]),
        FakeGpu("NVIDIA RTX 4090", 24 * GIB, 23 * GIB, power_mw=None),
    ]

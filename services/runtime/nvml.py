"""The one place that calls NVML (nvidia-ml-py, imported as pynvml): the probe and `modelfleet diagnose` read
GPUs through NvmlReader, and tests hand it a stand-in module (no GPU on CI machines)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from contracts.hardware import GpuDevice, GpuProcess

log = logging.getLogger(__name__)

#: Seconds between attempts to initialise NVML after it failed (a driver may be installed later).
REINIT_AFTER_S = 60.0


@dataclass
class GpuReading:
    has_gpu: bool
    reason: str | None
    devices: list[GpuDevice] = field(default_factory=list)
    driver_version: str | None = None


def load_pynvml() -> ModuleType | None:
    try:
        import pynvml
    except ImportError:
        return None
    module: ModuleType = pynvml
    return module


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class NvmlReader:
    """Reads every device; an NVML failure becomes `has_gpu: false` with the reason, never an exception."""

    def __init__(self, nvml: ModuleType | None = None, *, clock: Any = time.monotonic):
        self._nvml = nvml if nvml is not None else load_pynvml()
        self._clock = clock
        self._ready = False
        self._failed_at: float | None = None
        self._reason: str | None = None

    def _init(self) -> bool:
        if self._ready:
            return True
        if self._nvml is None:
            self._reason = "NVML library not found: the nvidia-ml-py package is not installed"
            return False
        if self._failed_at is not None and self._clock() - self._failed_at < REINIT_AFTER_S:
            return False
        try:
            self._nvml.nvmlInit()
        except Exception as exc:
            self._failed_at = self._clock()
            self._reason = self._describe(exc)
            return False
        self._ready = True
        self._reason = None
        return True

    def _describe(self, exc: Exception) -> str:
        not_found = getattr(self._nvml, "NVMLError_LibraryNotFound", None)
        if not_found is not None and isinstance(exc, not_found):
            return "NVML library not found (no NVIDIA driver on this host)"
        driver = getattr(self._nvml, "NVMLError_DriverNotLoaded", None)
        if driver is not None and isinstance(exc, driver):
            return "NVIDIA driver not loaded"
        return f"NVML failed: {type(exc).__name__}: {exc}"

    def read(self) -> GpuReading:
        if not self._init():
            return GpuReading(False, self._reason)
        nv = self._nvml
        assert nv is not None
        try:
            count = int(nv.nvmlDeviceGetCount())
            driver = self._optional(lambda: _text(nv.nvmlSystemGetDriverVersion()))
        except Exception as exc:
            self._ready = False  # re-initialise next time: the driver may have been reloaded
            self._failed_at = self._clock()
            return GpuReading(False, self._describe(exc))
        if count == 0:
            return GpuReading(False, "no NVIDIA device (NVML reports 0 devices)", driver_version=driver)
        devices = []
        for i in range(count):
            try:
                devices.append(self._device(i))
            except Exception as exc:  # one broken device must not hide the others
                log.warning("NVML device %d unreadable: %s", i, exc)
        if not devices:
            return GpuReading(False, f"{count} NVIDIA device(s) present but unreadable", driver_version=driver)
        return GpuReading(True, None, devices, driver)

    def _optional(self, read: Any) -> Any:
        try:
            return read()
        except Exception:
            return None  # NVMLError_NotSupported and friends: the field is simply unknown on this device

    def _device(self, i: int) -> GpuDevice:
        nv = self._nvml
        assert nv is not None
        h = nv.nvmlDeviceGetHandleByIndex(i)
        mem = nv.nvmlDeviceGetMemoryInfo(h)
        util = self._optional(lambda: nv.nvmlDeviceGetUtilizationRates(h).gpu)
        temp = self._optional(lambda: nv.nvmlDeviceGetTemperature(h, getattr(nv, "NVML_TEMPERATURE_GPU", 0)))
        power = self._optional(lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0)
        limit = self._optional(lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0)
        return GpuDevice(
            index=i, name=_text(nv.nvmlDeviceGetName(h)), uuid=_text(nv.nvmlDeviceGetUUID(h)),
            memory_total_bytes=int(mem.total), memory_free_bytes=int(mem.free), memory_used_bytes=int(mem.used),
            utilization_percent=float(util) if util is not None else None,
            temperature_c=float(temp) if temp is not None else None, power_w=power, power_limit_w=limit,
            processes=self._processes(h),
        )  # fmt: skip

    def _processes(self, h: Any) -> list[GpuProcess]:
        nv = self._nvml
        assert nv is not None
        seen: dict[int, GpuProcess] = {}
        for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            fn = getattr(nv, getter, None)
            procs = self._optional(lambda fn=fn: fn(h)) if fn is not None else None
            for p in procs or []:
                used = getattr(p, "usedGpuMemory", None)
                # NVML reports "not available" as a huge sentinel on some drivers / containers
                used = int(used) if isinstance(used, int) and 0 <= used < (1 << 60) else None
                seen.setdefault(int(p.pid), GpuProcess(pid=int(p.pid), used_memory_bytes=used))
        return list(seen.values())

    def close(self) -> None:
        if self._ready and self._nvml is not None:
            self._optional(self._nvml.nvmlShutdown)
            self._ready = False

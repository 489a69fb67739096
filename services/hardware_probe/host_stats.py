"""CPU, memory and disk of this host through psutil; static facts are read once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class HostReading:
    cpu_logical_cores: int
    cpu_physical_cores: int | None
    cpu_frequency_mhz: float | None
    cpu_load_percent: float | None
    load_average: list[float]
    memory_total_bytes: int
    memory_available_bytes: int
    memory_percent_used: float
    models_dir: str
    disk_total_bytes: int | None
    disk_free_bytes: int | None


class HostStats:
    def __init__(self, models_dir: Path):
        self.models_dir = models_dir
        self.logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
        self.physical = psutil.cpu_count(logical=False)
        psutil.cpu_percent(interval=None)  # primes the counter: the first real reading covers one interval

    def _disk_path(self) -> Path:
        """The models directory, or its nearest existing parent (it may not be created yet)."""
        path = self.models_dir.expanduser()
        while not path.exists() and path != path.parent:
            path = path.parent
        return path

    def read(self) -> HostReading:
        mem = psutil.virtual_memory()
        try:
            freq = psutil.cpu_freq()
        except (OSError, NotImplementedError):
            freq = None
        try:
            disk = psutil.disk_usage(str(self._disk_path()))
            total: int | None = int(disk.total)
            free: int | None = int(disk.free)
        except OSError:
            total = free = None
        try:
            load = [round(x, 3) for x in os.getloadavg()]
        except OSError:
            load = []
        return HostReading(
            cpu_logical_cores=self.logical, cpu_physical_cores=self.physical,
            cpu_frequency_mhz=round(freq.current, 1) if freq and freq.current else None,
            cpu_load_percent=min(100.0, psutil.cpu_percent(interval=None)), load_average=load,
            memory_total_bytes=int(mem.total), memory_available_bytes=int(mem.available),
            memory_percent_used=float(mem.percent), models_dir=str(self.models_dir), disk_total_bytes=total,
            disk_free_bytes=free,
        )  # fmt: skip

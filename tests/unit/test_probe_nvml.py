"""The NVML boundary: GPU paths through an NVML stand-in (no GPU here) and the real NVML's absence on this host."""

from __future__ import annotations

import pytest

from contracts.hardware import GpuDevice, GpuSampled
from services.hardware_probe import domain
from services.hardware_probe.torch_stats import TorchStats
from services.runtime import nvml as nvml_boundary
from services.runtime.nvml import REINIT_AFTER_S, NvmlReader
from tests.harness.nvml_stand_in import GIB, NVMLError, NVMLError_LibraryNotFound, stand_in, two_gpus

pytestmark = pytest.mark.unit


def test_every_device_is_read() -> None:
    r = NvmlReader(stand_in(two_gpus())).read()
    assert r.has_gpu and r.reason is None and r.driver_version == "570.86.15"
    h200, rtx = r.devices
    assert (h200.index, h200.name, h200.uuid) == (0, "NVIDIA H200", "GPU-NVIDIA H200")
    assert (h200.memory_total_bytes, h200.memory_free_bytes, h200.memory_used_bytes) == (141 * GIB, 121 * GIB, 20 * GIB)
    assert (h200.utilization_percent, h200.temperature_c, h200.power_w, h200.power_limit_w) == (40, 61, 215, 300)
    assert [(p.pid, p.used_memory_bytes) for p in h200.processes] == [(4242, 18 * GIB), (4343, None)]
    assert rtx.power_w is None  # NVMLError_NotSupported: unknown, not an error
    assert rtx.memory_free_bytes == 1 * GIB


def test_no_library_gives_the_reason_and_retries_later() -> None:
    now = [1000.0]
    fake = stand_in([], init_error=NVMLError_LibraryNotFound("NVML Shared Library Not Found"))
    reader = NvmlReader(fake, clock=lambda: now[0])
    r = reader.read()
    assert not r.has_gpu and r.reason == "NVML library not found (no NVIDIA driver on this host)"
    reader.read()
    assert fake.state["inits"] == 1  # not hammering a missing driver on every sample
    now[0] += REINIT_AFTER_S + 1
    reader.read()
    assert fake.state["inits"] == 2


def test_zero_devices_and_unreadable_devices() -> None:
    assert NvmlReader(stand_in([])).read().reason == "no NVIDIA device (NVML reports 0 devices)"
    gpus = two_gpus()
    gpus[0].broken = True
    r = NvmlReader(stand_in(gpus)).read()
    assert r.has_gpu and [d.name for d in r.devices] == ["NVIDIA RTX 4090"]
    gpus[1].broken = True
    r = NvmlReader(stand_in(gpus)).read()
    assert not r.has_gpu and "unreadable" in (r.reason or "")


def test_a_failure_after_init_is_a_reading_not_an_exception() -> None:
    fake = stand_in(two_gpus())
    reader = NvmlReader(fake, clock=lambda: 0.0)
    assert reader.read().has_gpu
    fake.state["count_error"] = NVMLError("GPU is lost")
    r = reader.read()
    assert not r.has_gpu and "GPU is lost" in (r.reason or "")


def test_the_real_nvml_on_this_machine_reports_why_there_is_no_gpu() -> None:
    module = nvml_boundary.load_pynvml()
    assert module is not None, "nvidia-ml-py must be installed"
    r = NvmlReader(module).read()
    assert not r.has_gpu
    assert r.reason and ("NVML library not found" in r.reason or "no NVIDIA device" in r.reason)


def test_torch_figures_join_their_device() -> None:
    devices = NvmlReader(stand_in(two_gpus())).read().devices
    joined = domain.with_torch(devices, {1: (3 * GIB, 5 * GIB)})
    assert (joined[0].torch_allocated_bytes, joined[1].torch_allocated_bytes) == (None, 3 * GIB)
    assert joined[1].torch_reserved_bytes == 5 * GIB


def test_torch_disabled_never_reads() -> None:
    t = TorchStats(enabled=False)
    assert not t.enabled and t.read() == {}


def test_sample_roundtrips_through_json() -> None:
    d = GpuDevice(index=0, name="x", uuid="u", memory_total_bytes=1, memory_free_bytes=1, memory_used_bytes=0)
    s = GpuSampled(producer="hardware-probe", host="h", host_id="h", has_gpu=True, gpus=[d], cpu_logical_cores=1,
                   memory_total_bytes=1, memory_available_bytes=1)  # fmt: skip
    assert GpuSampled.model_validate_json(s.model_dump_json()) == s

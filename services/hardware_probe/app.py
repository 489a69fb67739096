"""Composition root of the hardware-probe daemon."""

from __future__ import annotations

from contracts.hardware import GpuSampled, HostHeartbeat
from contracts.local_models import LocalModelsScanned
from services.hardware_probe import handlers, metrics
from services.hardware_probe.host_stats import HostStats
from services.hardware_probe.local_models import LocalModels
from services.hardware_probe.ollama_status import OllamaStatus
from services.hardware_probe.openai_backends import OpenAIBackends
from services.hardware_probe.sampler import Sampler
from services.hardware_probe.settings import HardwareProbeSettings
from services.hardware_probe.torch_stats import TorchStats
from services.runtime.hostid import stable_host_id
from services.runtime.nvml import NvmlReader
from services.runtime.parts import build_parts
from services.runtime.service import Service


def build_sampler(settings: HardwareProbeSettings, host_id: str, nvml: NvmlReader | None = None) -> Sampler:
    return Sampler(
        host_id, HostStats(settings.models_dir), nvml or NvmlReader(),
        OllamaStatus(settings.ollama_url, settings.ollama_timeout_s) if settings.ollama_url else None,
        TorchStats(settings.torch), settings.interval_s,
        OpenAIBackends(settings.openai_backends, settings.openai_timeout_s) if settings.openai_backends else None,
    )  # fmt: skip


def build_app(settings: HardwareProbeSettings, nvml: NvmlReader | None = None) -> Service:
    parts = build_parts("hardware-probe", settings)
    sampler = build_sampler(settings, parts.host_id, nvml)
    metrics.watch(sampler)
    handlers.register(parts.rpc, sampler)
    tasks = [handlers.sample_task(parts.broker, sampler, settings.history)]
    if settings.model_dirs:
        local = LocalModels(
            parts.host_id, settings.model_dirs, settings.state_dir, settings.interval_s, settings.local_models_report_s
        )
        tasks.append(handlers.local_models_task(parts.broker, local))
    return parts.service(tasks=tasks, publishes=[GpuSampled, HostHeartbeat, LocalModelsScanned])


def local_host_id(settings: HardwareProbeSettings) -> str:
    return stable_host_id(settings.state_dir, settings.host_id)

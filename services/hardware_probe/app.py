"""Composition root of the hardware-probe daemon."""

from __future__ import annotations

from services.hardware_probe import handlers
from services.hardware_probe.settings import HardwareProbeSettings
from services.runtime.parts import build_parts
from services.runtime.service import Service


def build_app(settings: HardwareProbeSettings) -> Service:
    parts = build_parts("hardware-probe", settings)
    beat = handlers.heartbeat_task(parts.broker, parts.host_id, settings.interval_s, settings.ollama_url)
    return parts.service(tasks=[beat])

"""Composition root of the inference fallback."""

from __future__ import annotations

from services.inference_fallback import handlers
from services.inference_fallback.domain import DegradedBackends
from services.inference_fallback.settings import InferenceFallbackSettings
from services.runtime.parts import build_parts
from services.runtime.service import Service


def build_app(settings: InferenceFallbackSettings) -> Service:
    parts = build_parts("inference-fallback", settings)
    handlers.register(parts.streams, DegradedBackends())
    return parts.service()

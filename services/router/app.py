"""Composition root of the router."""

from __future__ import annotations

from services.router import handlers
from services.router.domain import FleetView
from services.router.settings import RouterSettings
from services.runtime.parts import build_parts
from services.runtime.service import Service


def build_app(settings: RouterSettings) -> Service:
    parts = build_parts("router", settings)
    handlers.register(parts.streams, FleetView())
    return parts.service()

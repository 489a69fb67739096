"""Composition root of the catalog: the only place its objects are built."""

from __future__ import annotations

from pathlib import Path

from services.catalog import handlers
from services.catalog.settings import CatalogSettings
from services.runtime.parts import build_parts
from services.runtime.service import Service

MIGRATIONS = Path(__file__).with_name("migrations")


def build_app(settings: CatalogSettings) -> Service:
    parts = build_parts("catalog", settings, migrations=MIGRATIONS)
    handlers.register(parts.broker)
    return parts.service()

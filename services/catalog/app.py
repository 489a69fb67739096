"""Composition root of the catalog: the only place its objects are built."""

from __future__ import annotations

from pathlib import Path

from contracts.catalog import CatalogChanged, ModelRegistered, ProfileChanged
from services.catalog import handlers
from services.catalog.library import load_library
from services.catalog.local_models import LocalModelsView, register_local_models
from services.catalog.operations import Catalog
from services.catalog.settings import CatalogSettings
from services.catalog.store import CatalogStore
from services.runtime.parts import build_parts
from services.runtime.service import Service

MIGRATIONS = Path(__file__).with_name("migrations")


def build_app(settings: CatalogSettings) -> Service:
    parts = build_parts("catalog", settings, migrations=MIGRATIONS)
    assert parts.database is not None and parts.outbox is not None
    catalog = Catalog(
        CatalogStore(parts.database), parts.outbox, settings, load_library(settings.library_path), parts.host_id
    )
    handlers.register(parts.rpc, parts.streams, catalog)
    register_local_models(parts.rpc, parts.streams, LocalModelsView({}), settings.local_models_replay_s)
    # All three go out through the outbox, which FastStream cannot see: named here for the AsyncAPI document.
    return parts.service(tasks=[catalog.start], publishes=[ModelRegistered, ProfileChanged, CatalogChanged])

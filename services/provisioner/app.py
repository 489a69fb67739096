"""Composition root of the provisioner: the only place its objects are built."""

from __future__ import annotations

from pathlib import Path

from services.provisioner import handlers
from services.provisioner.settings import ProvisionerSettings
from services.provisioner.store import ProvisionerStore
from services.runtime.parts import build_parts
from services.runtime.service import Service

MIGRATIONS = Path(__file__).with_name("migrations")


def build_app(settings: ProvisionerSettings) -> Service:
    parts = build_parts("provisioner", settings, migrations=MIGRATIONS)
    assert parts.database is not None and parts.outbox is not None
    store = ProvisionerStore(parts.database)
    handlers.register(parts.streams, store, parts.outbox, parts.host_id)
    return parts.service()

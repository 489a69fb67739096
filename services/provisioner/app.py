"""Composition root of the provisioner: the only place its objects are built."""

from __future__ import annotations

from pathlib import Path

from contracts.envelope import Envelope
from contracts.provisioner import ModelPulled, ProvisionCompleted, ProvisionFailed, ProvisionProgress, UpdateAvailable
from services.provisioner import handlers, metrics
from services.provisioner.catalog_client import CatalogClient
from services.provisioner.hosts import HostDirectory
from services.provisioner.hub import HubClient
from services.provisioner.operations import InventoryOps, Jobs, Operations
from services.provisioner.provisioning import Provisioner
from services.provisioner.registry import OllamaRegistry
from services.provisioner.settings import ProvisionerSettings
from services.provisioner.store import ProvisionerStore
from services.provisioner.updates import Check, OllamaRegistryCheck, PinnedRevisionCheck, UpdateChecker
from services.runtime.bus import publish_event
from services.runtime.parts import build_parts
from services.runtime.service import Service, Task

MIGRATIONS = Path(__file__).with_name("migrations")


def build_app(settings: ProvisionerSettings) -> Service:
    parts = build_parts("provisioner", settings, migrations=MIGRATIONS)
    assert parts.database is not None and parts.outbox is not None
    store = ProvisionerStore(parts.database)
    token = settings.hf_token.get_secret_value() if settings.hf_token else None
    hub = HubClient(
        settings.hf_endpoint, token, settings.resolved_models_dir(), settings.resolved_quarantine_dir(),
        connect_timeout_s=settings.hub_connect_timeout_s, read_timeout_s=settings.hub_read_timeout_s,
    )  # fmt: skip
    hosts = HostDirectory(parts.broker, dict(settings.ollama_hosts))
    broker = parts.broker

    async def publish(event: ProvisionProgress) -> None:
        await publish_event(broker, event)

    provisioner = Provisioner(
        settings=settings,
        store=store,
        outbox=parts.outbox,
        publish=publish,
        hosts=hosts,
        hub=hub,
        catalog=CatalogClient(parts.rpc, settings.catalog_timeout_s),
        host_id=parts.host_id,
    )
    inventory = InventoryOps(
        store=store, hosts=hosts, hub=hub, host_id=parts.host_id, backend=provisioner.backend, cache=provisioner.cache
    )
    jobs = Jobs(settings.max_concurrent)
    metrics.watch(jobs, provisioner)
    ops = Operations(
        store=store,
        outbox=parts.outbox,
        host_id=parts.host_id,
        provisioner=provisioner,
        inventory=inventory,
        jobs=jobs,
        publish=publish,
        ack_wait_s=settings.command_ack_wait_s,
    )
    handlers.register(parts.rpc, parts.streams, ops, ack_wait_s=settings.command_ack_wait_s)
    tasks: list[Task] = [jobs.run]
    registry = OllamaRegistry(settings.registry_timeout_s)
    checks: list[Check] = [
        PinnedRevisionCheck(hub, parts.host_id),
        OllamaRegistryCheck(registry, settings.ollama_registry, hosts, provisioner.backend, parts.host_id),
    ]
    checker = UpdateChecker(
        store=store,
        outbox=parts.outbox,
        checks=checks,
        interval_s=settings.update_interval_s,
        skip=settings.skip_downloads,
        interval_enabled=settings.update_check,
    )
    handlers.register_updates(parts.rpc, checker)
    if settings.update_check:
        tasks.append(checker.run)
    published: list[type[Envelope]] = [
        ProvisionProgress,
        ModelPulled,
        ProvisionFailed,
        ProvisionCompleted,
        UpdateAvailable,
    ]
    return parts.service(tasks=tasks, publishes=published)

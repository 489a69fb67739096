"""A provisioner replica in the test process: the real `Provisioner` with its own NATS connection, its own
PostgreSQL pool and its own lease owner, as a second process would have them (tests of single flight across
replicas drive two of these at once, so each surely gets its own request)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from contracts.envelope import Envelope
from services.provisioner.catalog_client import CatalogClient
from services.provisioner.hosts import HostDirectory
from services.provisioner.hub import HubClient
from services.provisioner.provisioning import Provisioner
from services.provisioner.settings import ProvisionerSettings
from services.provisioner.store import ProvisionerStore
from services.runtime.bus import BusState, Retention, build_broker, ensure_streams, publish_event
from services.runtime.db import Database
from services.runtime.outbox import Outbox
from services.runtime.rpc import Rpc
from services.runtime.telemetry import build_tracer_provider

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "provisioner" / "migrations"


@asynccontextmanager
async def provisioner_replica(
    nats_url: str,
    database_url: str,
    state_dir: Path,
    hosts: dict[str, str],
    *,
    name: str,
    lease_ttl_s: float = 2.0,
    lease_poll_s: float = 0.05,
) -> AsyncIterator[Provisioner]:
    settings = ProvisionerSettings(
        nats_url=nats_url, database_url=database_url, state_dir=state_dir, ollama_hosts=hosts, host_id=name
    ).model_copy(update={"flight_lease_ttl_s": lease_ttl_s, "flight_lease_poll_s": lease_poll_s})
    tracer = build_tracer_provider(f"provisioner-{name}")
    broker = build_broker(nats_url, f"provisioner-{name}", tracer, BusState())
    await broker.connect()
    await ensure_streams(broker, Retention.from_settings(settings))
    db = Database(database_url, "provisioner", MIGRATIONS)
    await db.migrate()

    async def publish(event: Envelope) -> None:
        await publish_event(broker, event)

    try:
        yield Provisioner(
            settings=settings,
            store=ProvisionerStore(db),
            outbox=Outbox(db, broker),
            publish=publish,
            hosts=HostDirectory(broker, hosts),
            hub=HubClient(settings.hf_endpoint, None, state_dir / "models", state_dir / "quarantine"),
            catalog=CatalogClient(Rpc(broker, f"provisioner-{name}", tracer), 1.0),
            host_id=name,
        )
    finally:
        await broker.stop()
        await db.close()

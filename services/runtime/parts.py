"""The infrastructure every service's `build_app` starts from, built in one place so the wiring reads the same."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from faststream.nats import NatsBroker
from opentelemetry.sdk.trace import TracerProvider

from contracts.envelope import Envelope
from services.runtime.bus import BusState, build_broker
from services.runtime.consumer_lag import ConsumerLag
from services.runtime.db import Database
from services.runtime.dlq import Deliveries, StreamRouter
from services.runtime.hostid import stable_host_id
from services.runtime.metrics import MetricsEndpoint, install_metrics
from services.runtime.outbox import Outbox
from services.runtime.rpc import Rpc
from services.runtime.service import Service, Task
from services.runtime.settings import RuntimeSettings
from services.runtime.telemetry import build_tracer_provider


@dataclass
class ServiceParts:
    name: str
    settings: RuntimeSettings
    host_id: str
    broker: NatsBroker
    #: Request/reply handlers and clients (`rpc.*` subjects) go here.
    rpc: Rpc
    bus_state: BusState
    tracer_provider: TracerProvider
    #: Stream subscribers go here: it carries the dead-letter middleware and each consumer's delivery policy.
    streams: StreamRouter
    metrics: MetricsEndpoint | None = None
    database: Database | None = None
    outbox: Outbox | None = None

    def service(self, tasks: list[Task] | None = None, publishes: Sequence[type[Envelope]] = ()) -> Service:
        """The service process; `publishes` names every event or command its code publishes (for its AsyncAPI)."""
        self.broker.include_router(self.streams)
        all_tasks = list(tasks or [])
        all_tasks.append(ConsumerLag(self.broker, self.name).run)
        if self.outbox is not None:
            all_tasks.append(self.outbox.run)
        return Service(
            self.name,
            host_id=self.host_id,
            broker=self.broker,
            rpc=self.rpc,
            bus_state=self.bus_state,
            tracer_provider=self.tracer_provider,
            metrics=self.metrics,
            database=self.database,
            tasks=all_tasks,
            publishes=publishes,
            retry_initial_s=self.settings.retry_initial_s,
            retry_max_s=self.settings.retry_max_s,
        )


def build_parts(
    name: str, settings: RuntimeSettings, *, migrations: Path | None = None, own_metrics: bool = True
) -> ServiceParts:
    """Broker (with tracing), stream router (with dead-lettering), and, given migrations, database + outbox.
    `own_metrics=False` for a service built inside another's process (the gateway's router replica): it records on
    the host process's meter provider and `/metrics` instead of installing its own."""
    tracer_provider = build_tracer_provider(name)
    metrics = install_metrics(name, port=settings.metrics_port, bind=settings.metrics_bind) if own_metrics else None
    bus_state = BusState()
    broker = build_broker(settings.nats_url, name, tracer_provider, bus_state)
    host_id = stable_host_id(settings.state_dir, settings.host_id)
    streams = StreamRouter(Deliveries.from_settings(broker, name, host_id, settings))
    database = outbox = None
    if migrations is not None:
        database = Database(
            settings.database_url,
            name.replace("-", "_"),
            migrations,
            retry_initial_s=settings.retry_initial_s,
            retry_max_s=settings.retry_max_s,
        )
        outbox = Outbox(database, broker)
    return ServiceParts(
        name=name,
        settings=settings,
        host_id=host_id,
        broker=broker,
        rpc=Rpc(broker, name, tracer_provider),
        bus_state=bus_state,
        tracer_provider=tracer_provider,
        metrics=metrics,
        streams=streams,
        database=database,
        outbox=outbox,
    )

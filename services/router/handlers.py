"""Router bus handlers: fold the event streams into the fleet view; answer rpc.router.route.v1."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from faststream.nats import DeliverPolicy

from contracts.catalog import CatalogChanged, ProfileChanged
from contracts.hardware import GpuSampled, HostHeartbeat
from contracts.provisioner import ModelPulled, ProvisionCompleted, ProvisionFailed
from contracts.router import (
    BackendBusy,
    BackendCallCompleted,
    BackendCallsCompleted,
    BackendChecked,
    BackendsReply,
    BackendsRequest,
    LlmDegraded,
    LlmRecovered,
    RouteReply,
    RouteRequest,
)
from contracts.subjects import EVENTS_STREAM
from services.router.fleet import Fleet
from services.router.health import RoleStates
from services.router.monitor import RoleWatch
from services.router.operations import Router
from services.router.provisioning import OnDemand
from services.runtime.bus import jstream
from services.runtime.dlq import StreamRouter
from services.runtime.rpc import Rpc

Fold = TypeVar("Fold", bound=Callable[[Any], Awaitable[None]])


def register(
    rpc: Rpc,
    streams: StreamRouter,
    fleet: Fleet,
    router: Router,
    watch: RoleWatch,
    replay_s: float,
    on_demand: OnDemand | None = None,
    route_concurrency: int = 64,
) -> None:
    # Samples, beats and call reports from the recent past rebuild a fresh replica's view; every pull ever made
    # tells what is installed where.
    # No durable anywhere: every replica reads the streams itself, in stream order (docs/foundation.md).
    since = datetime.now(UTC) - timedelta(seconds=replay_s)
    # Every handler here is a pure fold into memory: a fault is dead-lettered at once, never retried
    # (docs/delivery.md). The high-volume ones (samples, beats, call reports, busy, checks) are `lean`: validated,
    # folded and acked straight from the NATS client, not through FastStream's per-message pipeline.
    events, recent = jstream(EVENTS_STREAM), DeliverPolicy.BY_START_TIME

    def ingest(subject: str) -> Callable[[Fold], Fold]:
        return streams.lean_fold(subject, stream=events, deliver_policy=recent, ack_wait_s=10, opt_start_time=since)

    @ingest(HostHeartbeat.SUBJECT)
    async def on_heartbeat(beat: HostHeartbeat) -> None:
        """Consumes evt.hardware.host.heartbeat.v1 into host liveness; idempotent (an older beat changes nothing)."""
        fleet.observe_heartbeat(beat)

    @ingest(GpuSampled.SUBJECT)
    async def on_sample(sample: GpuSampled) -> None:
        """Consumes evt.hardware.gpu.sampled.v1: free memory, backends, loaded models; an older sample is ignored."""
        fleet.observe_sample(sample)

    @streams.fold(ModelPulled.SUBJECT, stream=events, deliver_policy=DeliverPolicy.ALL, ack_wait_s=10)
    async def on_pulled(event: ModelPulled) -> None:
        """Consumes evt.provisioner.model.pulled.v1: the model is installed on the host's Ollama (routes waiting for
        an on-demand pull look again); idempotent."""
        fleet.observe_pulled(event)
        if on_demand is not None:
            on_demand.pulled(event)

    if on_demand is not None:
        news = DeliverPolicy.NEW  # only pulls this replica may be waiting for

        @streams.fold(ProvisionFailed.SUBJECT, stream=events, deliver_policy=news, ack_wait_s=10)
        async def on_provision_failed(event: ProvisionFailed) -> None:
            """Consumes evt.provisioner.failed.v1: a failed on-demand pull ends its waits (503). Idempotent."""
            on_demand.failed(event)

        @streams.fold(ProvisionCompleted.SUBJECT, stream=events, deliver_policy=news, ack_wait_s=10)
        async def on_provision_completed(event: ProvisionCompleted) -> None:
            """Consumes evt.provisioner.request.completed.v1: a pull that pulled nothing ends its waits."""
            on_demand.completed(event)

    @ingest(BackendCallCompleted.SUBJECT)
    async def on_call(event: BackendCallCompleted) -> None:
        """Consumes evt.gateway.backend.call.completed.v1 (one report alone, as older gateways send it) into passive
        health (in-flight, EWMA, failures, circuit).
        Folded once per delivery, in stream order: every replica gets the same figures."""
        fleet.observe_call(event)

    @ingest(BackendCallsCompleted.SUBJECT)
    async def on_calls(event: BackendCallsCompleted) -> None:
        """Consumes evt.gateway.backend.calls.completed.v1 (a gateway's call reports of one short window, in the
        order the calls ended): each folded as a `BackendCallCompleted` of its own. Every replica gets the same."""
        for call in event.calls:
            fleet.observe_call(call)

    @ingest(BackendBusy.SUBJECT)
    async def on_busy(event: BackendBusy) -> None:
        """Consumes evt.gateway.backend.busy.v1 (a gateway's calls open on a backend, told when the first starts and
        while they last) into in-flight, in stream order like call reports: a check timeout while calls are open
        counts for nothing. Idempotent (an older report than the one held changes nothing)."""
        fleet.observe_busy(event)

    @streams.fold(CatalogChanged.SUBJECT, stream=events, deliver_policy=DeliverPolicy.NEW, ack_wait_s=10)
    async def on_catalog_changed(event: CatalogChanged) -> None:
        """Consumes evt.catalog.entries.changed.v1: drops cached resolutions. Idempotent."""
        router.invalidate()
        watch.invalidate()

    @streams.fold(ProfileChanged.SUBJECT, stream=events, deliver_policy=DeliverPolicy.NEW, ack_wait_s=10)
    async def on_profile_changed(event: ProfileChanged) -> None:
        """Consumes evt.catalog.profile.changed.v1: drops cached resolutions, re-reads the watched roles. Idempotent."""
        router.invalidate()
        watch.invalidate()

    @ingest(BackendChecked.SUBJECT)
    async def on_checked(event: BackendChecked) -> None:
        """Consumes evt.router.backend.checked.v1 (any replica's active check) into the backend's circuit, in
        stream order like call reports; JetStream keeps one result per backend and slot."""
        fleet.observe_check(event)

    states: RoleStates = watch.states
    every = DeliverPolicy.ALL  # transitions are rare; all of them tell each role's last published state

    @streams.fold(LlmDegraded.SUBJECT, stream=events, deliver_policy=every, ack_wait_s=10)
    async def on_degraded(event: LlmDegraded) -> None:
        """Consumes evt.router.llm.degraded.v1 (this or another replica's): the role's published state. Idempotent."""
        if event.role:
            states.fold(event.role, "degraded", event.event_id)

    @streams.fold(LlmRecovered.SUBJECT, stream=events, deliver_policy=every, ack_wait_s=10)
    async def on_recovered(event: LlmRecovered) -> None:
        """Consumes evt.router.llm.recovered.v1: the role's published state. Idempotent."""
        if event.role:
            states.fold(event.role, "recovered", event.event_id)

    @rpc.handler(BackendsRequest)
    async def on_backends(req: BackendsRequest) -> BackendsReply:
        """Consumes rpc.router.backends.v1; replies every known backend's state and the watched roles'. Read-only."""
        return router.backends(watch)

    @rpc.handler(RouteRequest, concurrency=route_concurrency)
    async def on_route(req: RouteRequest) -> RouteReply:
        """Consumes rpc.router.route.v1; replies RouteReply (backend, model name, options, fallback chain, reason).
        Errors: the catalog's own (404 unknown role), 422 bad options, 503 `no_backend`. Read-only."""
        return await router.route(req)

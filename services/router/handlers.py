"""Router bus handlers: fold the event streams into the fleet view; answer rpc.router.route.v1."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from faststream import AckPolicy
from faststream.nats import ConsumerConfig, DeliverPolicy, NatsRouter

from contracts.catalog import CatalogChanged, ProfileChanged
from contracts.hardware import GpuSampled, HostHeartbeat
from contracts.provisioner import ModelPulled
from contracts.router import BackendCallCompleted, RouteReply, RouteRequest
from contracts.subjects import EVENTS_STREAM
from services.router.fleet import Fleet
from services.router.operations import Router
from services.runtime.bus import jstream
from services.runtime.rpc import Rpc


def _config(since: datetime | None = None) -> ConsumerConfig:
    return ConsumerConfig(ack_wait=10, opt_start_time=since) if since else ConsumerConfig(ack_wait=10)


def register(rpc: Rpc, streams: NatsRouter, fleet: Fleet, router: Router, replay_s: float) -> None:
    # Samples, beats and call reports from the recent past rebuild a fresh replica's view; every pull ever made
    # tells what is installed where.
    # No durable anywhere: every replica reads the streams itself, in stream order (docs/foundation.md).
    since = datetime.now(UTC) - timedelta(seconds=replay_s)
    events, ack, recent = jstream(EVENTS_STREAM), AckPolicy.ACK, DeliverPolicy.BY_START_TIME

    @streams.subscriber(
        HostHeartbeat.SUBJECT, stream=events, deliver_policy=recent, config=_config(since), ack_policy=ack
    )
    async def on_heartbeat(beat: HostHeartbeat) -> None:
        """Consumes evt.hardware.host.heartbeat.v1 into host liveness; idempotent (an older beat changes nothing)."""
        fleet.observe_heartbeat(beat)

    @streams.subscriber(GpuSampled.SUBJECT, stream=events, deliver_policy=recent, config=_config(since), ack_policy=ack)
    async def on_sample(sample: GpuSampled) -> None:
        """Consumes evt.hardware.gpu.sampled.v1: free memory, backends, loaded models; an older sample is ignored."""
        fleet.observe_sample(sample)

    @streams.subscriber(
        ModelPulled.SUBJECT, stream=events, deliver_policy=DeliverPolicy.ALL, config=_config(), ack_policy=ack
    )
    async def on_pulled(event: ModelPulled) -> None:
        """Consumes evt.provisioner.model.pulled.v1: the model is installed on the host's Ollama; idempotent."""
        fleet.observe_pulled(event)

    @streams.subscriber(
        BackendCallCompleted.SUBJECT, stream=events, deliver_policy=recent, config=_config(since), ack_policy=ack
    )
    async def on_call(event: BackendCallCompleted) -> None:
        """Consumes evt.gateway.backend.call.completed.v1 into passive health (in-flight, EWMA, failures, circuit).
        Folded once per delivery, in stream order: every replica gets the same figures."""
        fleet.observe_call(event)

    @streams.subscriber(
        CatalogChanged.SUBJECT, stream=events, deliver_policy=DeliverPolicy.NEW, config=_config(), ack_policy=ack
    )
    async def on_catalog_changed(event: CatalogChanged) -> None:
        """Consumes evt.catalog.entries.changed.v1: drops cached resolutions. Idempotent."""
        router.invalidate()

    @streams.subscriber(
        ProfileChanged.SUBJECT, stream=events, deliver_policy=DeliverPolicy.NEW, config=_config(), ack_policy=ack
    )
    async def on_profile_changed(event: ProfileChanged) -> None:
        """Consumes evt.catalog.profile.changed.v1: drops cached resolutions. Idempotent."""
        router.invalidate()

    @rpc.handler(RouteRequest)
    async def on_route(req: RouteRequest) -> RouteReply:
        """Consumes rpc.router.route.v1; replies RouteReply (backend, model name, options, fallback chain, reason).
        Errors: the catalog's own (404 unknown role), 422 bad options, 503 `no_backend`. Read-only."""
        return await router.route(req)

"""Router bus handlers: fold the event streams into the fleet view."""

from __future__ import annotations

from faststream import AckPolicy
from faststream.nats import ConsumerConfig, DeliverPolicy, NatsRouter

from contracts.hardware import HostHeartbeat
from contracts.subjects import EVENTS_STREAM
from services.router.domain import FleetView
from services.runtime.bus import jstream


def register(streams: NatsRouter, fleet: FleetView) -> None:
    # No durable: every router replica rebuilds its own view, starting from the recent past.
    @streams.subscriber(
        HostHeartbeat.SUBJECT,
        stream=jstream(EVENTS_STREAM),
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        config=ConsumerConfig(ack_wait=10),
        ack_policy=AckPolicy.ACK,
    )
    async def on_heartbeat(beat: HostHeartbeat) -> None:
        """Consumes evt.hardware.host.heartbeat.v1 into the fleet view; idempotent (older beats are ignored)."""
        fleet.observe(beat)

"""NATS broker factory: JetStream streams, tracing middleware, connection state for health."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from faststream.nats import JStream, NatsBroker
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from nats.js.api import KeyValueConfig, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError
from opentelemetry.sdk.trace import TracerProvider

from contracts.envelope import Envelope
from contracts.hardware import HOSTS_BUCKET
from contracts.subjects import COMMANDS_STREAM, DLQ_STREAM, EVENTS_STREAM, STREAMS, stream_for
from services.runtime.metrics import meter
from services.runtime.settings import RuntimeSettings

log = logging.getLogger(__name__)

_meter = meter("modelfleet.runtime")
_connection_events = _meter.create_counter(
    "modelfleet.nats.connection.events",
    unit="{event}",
    description="NATS connection lost (disconnected) and restored (reconnected) by this process's client",
)

#: Deduplication window: a redelivered publish with the same Nats-Msg-Id within it is dropped by the server.
DUPLICATE_WINDOW_S = 120.0

#: The KV bucket of download leases (services/provisioner/flights.py): one key per host x model being downloaded.
FLIGHTS_BUCKET = "flights"


@dataclass(frozen=True)
class Limits:
    """What JetStream keeps of one stream or bucket; -1 is no limit."""

    max_age_s: float
    max_bytes: int
    max_msgs_per_subject: int = -1


@dataclass(frozen=True)
class Retention:
    """The limits of every stream and KV bucket; `ensure_streams` applies them (docs/foundation.md "Retention")."""

    streams: dict[str, Limits]
    #: bucket -> (limits, history a new bucket gets)
    buckets: dict[str, tuple[Limits, int]]

    @classmethod
    def from_settings(cls, s: RuntimeSettings) -> Retention:
        return cls(
            streams={
                EVENTS_STREAM: Limits(
                    s.retention_events_max_age_s, s.retention_events_max_bytes, s.retention_events_max_msgs_per_subject
                ),
                COMMANDS_STREAM: Limits(s.retention_commands_max_age_s, s.retention_commands_max_bytes),
                DLQ_STREAM: Limits(s.retention_dlq_max_age_s, s.retention_dlq_max_bytes),
            },
            buckets={
                HOSTS_BUCKET: (Limits(s.retention_hosts_max_age_s, s.retention_hosts_max_bytes), 5),
                FLIGHTS_BUCKET: (Limits(s.flight_lease_ttl_s, s.retention_flights_max_bytes), 1),
            },
        )


def jstream(name: str) -> JStream:
    """The stream object a subscriber names; streams are declared by `ensure_streams`, not by FastStream."""
    return JStream(name=name, subjects=list(STREAMS[name]), declare=False)


@dataclass
class BusState:
    """What health reports about NATS; flipped by the client's connection callbacks."""

    connected: bool = False
    last_error: str = field(default="")

    closing: bool = False
    #: how many times the connection dropped: what a process kept from the bus before a drop may be stale after it
    drops: int = 0

    async def on_disconnected(self) -> None:
        self.connected = False
        self.drops += 1
        if not self.closing:
            _connection_events.add(1, {"modelfleet.nats.event": "disconnected"})
            log.warning("lost NATS connection; reconnecting")

    async def on_reconnected(self) -> None:
        self.connected = True
        _connection_events.add(1, {"modelfleet.nats.event": "reconnected"})
        log.info("NATS connection restored")

    async def on_error(self, exc: Exception) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"


def build_broker(nats_url: str, service: str, tracer_provider: TracerProvider, state: BusState) -> NatsBroker:
    return NatsBroker(
        servers=nats_url.split(","),
        name=f"modelfleet-{service}",
        middlewares=[NatsTelemetryMiddleware(tracer_provider=tracer_provider)],
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        connect_timeout=2,
        disconnected_cb=state.on_disconnected,
        reconnected_cb=state.on_reconnected,
        error_cb=state.on_error,
        logger=None,
    )


async def start_broker(
    broker: NatsBroker, state: BusState, who: str, retry_initial_s: float, retry_max_s: float
) -> None:
    """Connect, declare the streams and start the subscribers, retrying with backoff for as long as it takes."""
    delay = retry_initial_s
    while True:
        try:
            await broker.connect()
            await ensure_streams(broker)
            await broker.start()
            state.connected = True
            return
        except Exception as exc:  # transient: NATS not up yet, or JetStream not ready
            state.connected = False
            state.last_error = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("%s: NATS unavailable (%s); retrying in %.1fs", who, state.last_error, delay)
            await stop_broker(broker)
            await asyncio.sleep(delay)
            delay = min(delay * 2, retry_max_s)


async def stop_broker(broker: NatsBroker) -> None:
    """Stop, whatever state the connection is in (it may never have been established)."""
    try:
        await broker.stop()
    except Exception as exc:
        log.debug("broker stop: %s", exc)


async def ensure_streams(broker: NatsBroker, retention: Retention | None = None) -> None:
    """Declare EVENTS, COMMANDS, DLQ and the KV buckets with their limits; idempotent, and brings an older config
    (one without limits, or with other ones) up to date. Without `retention`, the limits are read from the
    environment (the shared MODELFLEET_RETENTION_* / MODELFLEET_FLIGHT_* names every service reads alike)."""
    retention = retention or Retention.from_settings(RuntimeSettings())
    js = broker.connection.jetstream()
    for name, subjects in STREAMS.items():
        limits = retention.streams[name]
        config = StreamConfig(
            name=name,
            subjects=list(subjects),
            duplicate_window=min(DUPLICATE_WINDOW_S, limits.max_age_s),
            max_age=limits.max_age_s,
            max_bytes=limits.max_bytes,
            max_msgs_per_subject=limits.max_msgs_per_subject,
        )
        try:
            await js.add_stream(config=config)
        except BadRequestError:
            await js.update_stream(config=config)
    for bucket, (limits, history) in retention.buckets.items():
        await _ensure_bucket(broker, bucket, limits, history)


async def _ensure_bucket(broker: NatsBroker, bucket: str, limits: Limits, history: int) -> None:
    """Create the bucket with its limits, or set them on the bucket's stream, keeping its history and the rest."""
    js = broker.connection.jetstream()
    try:
        info = await js.stream_info(f"KV_{bucket}")
    except NotFoundError:
        try:
            await js.create_key_value(
                KeyValueConfig(bucket=bucket, history=history, ttl=limits.max_age_s, max_bytes=limits.max_bytes)
            )
            return
        except BadRequestError:  # another service created it just now: update it below
            info = await js.stream_info(f"KV_{bucket}")
    config = info.config
    if config.max_age == limits.max_age_s and config.max_bytes == limits.max_bytes:
        return
    config.max_age = limits.max_age_s
    config.max_bytes = limits.max_bytes
    config.duplicate_window = min(config.duplicate_window or DUPLICATE_WINDOW_S, limits.max_age_s)
    await js.update_stream(config=config)


async def publish_event(broker: NatsBroker, message: Envelope, subject: str | None = None) -> None:
    """Publish a fact or command to its stream, with `Nats-Msg-Id = event_id`, and wait for the server's ack."""
    subject = subject or message.SUBJECT
    stream = stream_for(subject)
    if stream is None:
        raise ValueError(f"{subject!r} is not captured by a stream; use a request for rpc subjects")
    await broker.publish(
        message.model_dump(mode="json"),
        subject,
        stream=stream,
        headers={"Nats-Msg-Id": str(message.event_id)},
        correlation_id=str(message.correlation_id or message.event_id),
    )


async def publish_lean(broker: NatsBroker, message: Envelope) -> None:
    """`publish_event` for high-volume reports nobody traces (the gateway's call and busy reports): the same subject,
    stream, `Nats-Msg-Id` and server ack, straight from the NATS client instead of through FastStream's publish
    pipeline and its tracing middleware (hundreds of microseconds of CPU per message in the gateway's loop)."""
    subject = message.SUBJECT
    stream = stream_for(subject)
    if stream is None:
        raise ValueError(f"{subject!r} is not captured by a stream; use a request for rpc subjects")
    headers = {"Nats-Msg-Id": str(message.event_id), "content-type": "application/json"}
    await broker.connection.jetstream().publish(subject, message.model_dump_json().encode(), stream=stream,
                                                 headers=headers)  # fmt: skip

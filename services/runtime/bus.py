"""NATS broker factory: JetStream streams, tracing middleware, connection state for health."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from faststream.nats import JStream, NatsBroker
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from nats.js.api import StreamConfig
from nats.js.errors import BadRequestError
from opentelemetry.sdk.trace import TracerProvider

from contracts.envelope import Envelope
from contracts.subjects import STREAMS, stream_for

log = logging.getLogger(__name__)

#: Deduplication window: a redelivered publish with the same Nats-Msg-Id within it is dropped by the server.
DUPLICATE_WINDOW_S = 120.0


def jstream(name: str) -> JStream:
    """The stream object a subscriber names; streams are declared by `ensure_streams`, not by FastStream."""
    return JStream(name=name, subjects=list(STREAMS[name]), declare=False)


@dataclass
class BusState:
    """What health reports about NATS; flipped by the client's connection callbacks."""

    connected: bool = False
    last_error: str = field(default="")

    closing: bool = False

    async def on_disconnected(self) -> None:
        self.connected = False
        if not self.closing:
            log.warning("lost NATS connection; reconnecting")

    async def on_reconnected(self) -> None:
        self.connected = True
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


async def ensure_streams(broker: NatsBroker) -> None:
    """Declare EVENTS, COMMANDS and DLQ; idempotent, and brings an older config up to date."""
    js = broker.connection.jetstream()
    for name, subjects in STREAMS.items():
        config = StreamConfig(name=name, subjects=list(subjects), duplicate_window=DUPLICATE_WINDOW_S)
        try:
            await js.add_stream(config=config)
        except BadRequestError:
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

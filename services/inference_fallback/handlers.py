"""Fallback bus handlers: track which Ollama backends the router reports degraded."""

from __future__ import annotations

from faststream import AckPolicy
from faststream.nats import DeliverPolicy, NatsRouter

from contracts.router import LlmDegraded, LlmRecovered
from contracts.subjects import EVENTS_STREAM
from services.inference_fallback.domain import DegradedBackends
from services.runtime.bus import jstream


def register(streams: NatsRouter, state: DegradedBackends) -> None:
    @streams.subscriber(
        LlmDegraded.SUBJECT, stream=jstream(EVENTS_STREAM), deliver_policy=DeliverPolicy.NEW, ack_policy=AckPolicy.ACK
    )
    async def on_degraded(event: LlmDegraded) -> None:
        """Consumes evt.router.llm.degraded.v1; idempotent (keyed by backend URL)."""
        state.degraded(event)

    @streams.subscriber(
        LlmRecovered.SUBJECT, stream=jstream(EVENTS_STREAM), deliver_policy=DeliverPolicy.NEW, ack_policy=AckPolicy.ACK
    )
    async def on_recovered(event: LlmRecovered) -> None:
        """Consumes evt.router.llm.recovered.v1; idempotent (keyed by backend URL)."""
        state.recovered(event)

"""Fallback handlers: the streamed generate, the slots scatter-gather, the router's role events, and the adapter
registry's events."""

from __future__ import annotations

from collections.abc import AsyncIterator

from faststream.nats import DeliverPolicy

from contracts.fallback import AdapterUpdated, GenerateChunk, GenerateEnd, GenerateRequest, SlotsReply, SlotsRequest
from contracts.router import LlmDegraded, LlmRecovered
from contracts.subjects import EVENTS_STREAM
from services.inference_fallback.operations import FallbackOps
from services.runtime.bus import jstream
from services.runtime.dlq import StreamRouter
from services.runtime.rpc import Rpc


def register(streams: StreamRouter, rpc: Rpc, ops: FallbackOps) -> None:
    @rpc.stream_handler(GenerateRequest)
    async def generate(req: GenerateRequest) -> AsyncIterator[GenerateChunk | GenerateEnd]:
        """Consumes rpc.fallback.generate.v1 (queue group: one replica answers); streams GenerateChunk deltas, then
        GenerateEnd. Not idempotent (sampling); the caller's cancel stops the generation."""
        async for item in ops.generate(req):
            yield item

    @rpc.handler(SlotsRequest, queue=None)
    async def slots(req: SlotsRequest) -> SlotsReply:
        """Consumes rpc.fallback.slots.v1; every replica replies SlotsReply. Read-only, so idempotent."""
        return await ops.slots_reply()

    @streams.fold(LlmDegraded.SUBJECT, stream=jstream(EVENTS_STREAM), deliver_policy=DeliverPolicy.NEW)
    async def on_degraded(event: LlmDegraded) -> None:
        """Consumes evt.router.llm.degraded.v1: warms the named role's slot (emits evt.fallback.slot.loaded.v1);
        idempotent (a second event for the role finds the slot loaded or loading)."""
        ops.on_degraded(event)

    @streams.fold(LlmRecovered.SUBJECT, stream=jstream(EVENTS_STREAM), deliver_policy=DeliverPolicy.NEW)
    async def on_recovered(event: LlmRecovered) -> None:
        """Consumes evt.router.llm.recovered.v1: starts the role's idle expiry (evt.fallback.slot.evicted.v1 later);
        idempotent (keyed by role)."""
        ops.on_recovered(event)

    @streams.fold(AdapterUpdated.SUBJECT, stream=jstream(EVENTS_STREAM), deliver_policy=DeliverPolicy.ALL)
    async def on_adapter_updated(event: AdapterUpdated) -> None:
        """Consumes evt.fallback.adapter.updated.v1 from the start of the stream (ALL, not NEW: JetStream drops a
        replica's own "added" event as a duplicate of another replica's within the dedup window, so a replica that
        starts later learns it only from the history); folds it into the adapter book. Idempotent by name +
        sha256. Emits nothing."""
        ops.on_adapter_updated(event)

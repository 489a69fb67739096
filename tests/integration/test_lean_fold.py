"""A lean fold (`StreamRouter.lean_fold`, the router's ingest path) keeps a fold's delivery semantics with real NATS
and a real FastStream broker: a good event is folded and acked, poison and a handler fault are dead-lettered (naming
the consumer and the reason) and acked, the `process` span joins the producer's trace when a span processor records,
and the subscriber is still FastStream's (declared, started, and watched like any other)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import nats
import pytest
from faststream.nats import DeliverPolicy
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from contracts.hardware import HostHeartbeat
from contracts.subjects import DLQ_STREAM, EVENTS_STREAM, dlq_subject
from services.runtime.bus import BusState, build_broker, ensure_streams, jstream
from services.runtime.dlq import Deliveries, LeanFold, StreamRouter
from tests.harness.waiting import eventually

pytestmark = pytest.mark.integration

SUBJECT = HostHeartbeat.SUBJECT


async def test_lean_fold_folds_acks_dead_letters_and_traces(nats_url):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    service = f"lean-{uuid.uuid4().hex[:6]}"
    broker = build_broker(nats_url, service, provider, BusState())
    streams = StreamRouter(Deliveries(broker, service, "test-host"))
    folded: list[HostHeartbeat] = []

    @streams.lean_fold(SUBJECT, stream=jstream(EVENTS_STREAM), deliver_policy=DeliverPolicy.NEW, ack_wait_s=10)
    async def on_beat(beat: HostHeartbeat) -> None:
        if beat.host_id == "boom":
            raise RuntimeError("the fold broke")
        folded.append(beat)

    broker.include_router(streams)
    await broker.connect()
    await ensure_streams(broker)
    await broker.start()
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        dlq = await js.subscribe(dlq_subject(SUBJECT), stream=DLQ_STREAM, deliver_policy=DeliverPolicy.NEW)
        trace_id = uuid.uuid4().hex
        good = HostHeartbeat(producer="test", host_id="good-host", interval_s=2)
        traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
        await js.publish(SUBJECT, good.model_dump_json().encode(), headers={"traceparent": traceparent})
        await js.publish(SUBJECT, b"\x00\xffnot json")
        boom = HostHeartbeat(producer="test", host_id="boom", interval_s=2)
        await js.publish(SUBJECT, boom.model_dump_json().encode())

        letters: list[dict[str, Any]] = [json.loads((await dlq.next_msg(timeout=10)).data) for _ in range(2)]
        reasons = sorted(letter["reason"].split(":")[0] for letter in letters)
        assert reasons == ["RuntimeError", "ValidationError"], letters
        assert all(letter["consumer"].startswith(f"{service}/") for letter in letters)
        assert [b.host_id for b in folded] == ["good-host"]
        assert folded[0].event_id == good.event_id

        # every delivery is acked: nothing waits on the consumer, nothing is redelivered
        sub = next(s for s in broker.subscribers if getattr(s, "subscription", None) is not None)
        assert isinstance(getattr(sub.consume, "__self__", None), LeanFold)  # the lean path took the deliveries

        async def settled() -> bool:
            info = await sub.subscription.consumer_info()
            return info.num_ack_pending == 0 and info.num_pending == 0 and info.num_redelivered == 0

        await eventually(settled, 10, "all three deliveries acked")

        spans = [s for s in exporter.get_finished_spans() if s.name == f"{SUBJECT} process"]
        assert len(spans) == 3
        joined = [s for s in spans if s.context is not None and f"{s.context.trace_id:032x}" == trace_id]
        assert len(joined) == 1 and joined[0].kind == SpanKind.CONSUMER
        assert joined[0].attributes is not None and joined[0].attributes["messaging.destination.name"] == SUBJECT
    finally:
        await nc.close()
        await broker.stop()

"""The request/reply seam against a real NATS server: typed replies and errors, 422s, queue groups, streams."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import nats
import pytest
from faststream.nats import NatsBroker
from nats.aio.msg import Msg
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import Field

from contracts.envelope import Contract
from contracts.rpc import ErrorReply, RpcError, RpcRequest, StreamRequest
from services.runtime.rpc import DEFAULT_WINDOW, Rpc
from services.runtime.telemetry import traced_when_exported

pytestmark = pytest.mark.integration


class EchoReply(Contract):
    text: str
    replica: str = ""


class EchoRequest(RpcRequest[EchoReply]):
    SUBJECT = "rpc.seamtest.echo.v1"

    text: str = Field(min_length=1, max_length=64)
    fail: int | None = None


class Token(Contract):
    index: int


class Totals(Contract):
    tokens: int


class CountRequest(StreamRequest[Token, Totals]):
    SUBJECT = "rpc.seamtest.count.v1"

    n: int = Field(ge=0)
    fail_after: int | None = None


async def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def replica(nats_url: str, provider: TracerProvider | None = None) -> AsyncIterator[Rpc]:
    broker = NatsBroker(servers=nats_url, logger=None)
    await broker.connect()
    rpc = Rpc(broker, "seamtest", provider)
    try:
        yield rpc
    finally:
        await rpc.close()
        await broker.stop()


def echo_handlers(rpc: Rpc, name: str) -> None:
    @rpc.handler(EchoRequest)
    async def echo(req: EchoRequest) -> EchoReply:
        if req.fail == 404:
            raise RpcError(404, f"profile: {req.text!r} does not exist", field="profile_id")
        if req.fail == 500:
            raise KeyError("a bug")
        return EchoReply(text=req.text, replica=name)


async def test_ask_returns_the_typed_reply_and_raises_the_typed_error(nats_url: str) -> None:
    async with replica(nats_url) as server, replica(nats_url) as client:
        echo_handlers(server, "a")
        await server.bind()

        reply = await client.ask(EchoRequest(text="hi"))
        assert reply == EchoReply(text="hi", replica="a")

        with pytest.raises(RpcError) as caught:
            await client.ask(EchoRequest(text="nope", fail=404))
        assert (caught.value.status, caught.value.code, caught.value.field) == (404, "not_found", "profile_id")
        assert "'nope' does not exist" in str(caught.value.detail)

        with pytest.raises(RpcError) as caught:
            await client.ask(EchoRequest(text="boom", fail=500))
        assert (caught.value.status, caught.value.code) == (500, "internal")
        assert "KeyError" in str(caught.value.detail)
        assert (await client.ask(EchoRequest(text="still here"))).text == "still here"
        assert server.stats.failed[EchoRequest.SUBJECT] == 2


async def test_an_invalid_or_undecodable_request_gets_a_422_naming_the_field_and_is_counted(nats_url: str) -> None:
    async with replica(nats_url) as server:
        echo_handlers(server, "a")
        await server.bind()
        nc = await nats.connect(nats_url)
        try:
            for payload, field in ((b'{"text": ""}', "text"), (b"not json", None), (b'{"text": 5}', "text")):
                msg = await nc.request(EchoRequest.SUBJECT, payload, timeout=5)
                assert msg.headers == {"Mf-Rpc": "error"}
                error = RpcError.from_body(ErrorReply.model_validate_json(msg.data).error)
                assert (error.status, error.code) == (422, "invalid_request")
                if field:
                    assert error.field == field and f"{field}:" in str(error.detail)
        finally:
            await nc.close()
        assert server.stats.invalid[EchoRequest.SUBJECT] == 3


async def test_timeout_names_the_subject_and_the_wait_and_no_responder_is_a_503(nats_url: str) -> None:
    async with replica(nats_url) as client:
        with pytest.raises(RpcError) as caught:
            await client.ask(EchoRequest(text="anyone?"), timeout_s=0.5)
        assert (caught.value.status, caught.value.code) == (503, "no_responders")
        assert EchoRequest.SUBJECT in str(caught.value)

        nc = await nats.connect(nats_url)
        try:

            async def hear_and_stay_silent(msg: object) -> None:
                return None

            await nc.subscribe(EchoRequest.SUBJECT, cb=hear_and_stay_silent)
            await nc.flush()
            with pytest.raises(RpcError) as caught:
                await client.ask(EchoRequest(text="slow"), timeout_s=0.3)
            assert (caught.value.status, caught.value.code) == (504, "timeout")
            assert f"no answer on {EchoRequest.SUBJECT} within 0.3 s" in str(caught.value)
        finally:
            await nc.close()


async def test_replicas_share_the_subject_through_a_queue_group_and_gather_hears_all(nats_url: str) -> None:
    class Gathered(RpcRequest[EchoReply]):
        SUBJECT = "rpc.seamtest.gather.v1"

    async with replica(nats_url) as a, replica(nats_url) as b, replica(nats_url) as client:
        for rpc, name in ((a, "a"), (b, "b")):
            echo_handlers(rpc, name)

            @rpc.handler(Gathered, queue=None)
            async def every(req: Gathered, name: str = name) -> EchoReply:
                return EchoReply(text="here", replica=name)

            await rpc.bind()
        answered = [(await client.ask(EchoRequest(text=str(i)))).replica for i in range(60)]
        assert set(answered) == {"a", "b"}  # each request answered once, by either
        assert a.stats.served[EchoRequest.SUBJECT] + b.stats.served[EchoRequest.SUBJECT] == 60

        got = await client.gather(Gathered(), timeout_s=5, done=lambda replies: len(replies) >= 2)
        assert sorted(r.replica for r in got) == ["a", "b"]


def count_handler(rpc: Rpc, produced: list[int], closed: asyncio.Event) -> None:
    @rpc.stream_handler(CountRequest)
    async def count(req: CountRequest) -> AsyncIterator[Token | Totals]:
        try:
            for i in range(req.n):
                if req.fail_after is not None and i == req.fail_after:
                    raise RpcError(409, "count: stopped on purpose", field="fail_after")
                produced.append(i)
                yield Token(index=i)
            yield Totals(tokens=req.n)
        finally:
            closed.set()


async def test_a_stream_delivers_ten_thousand_chunks_in_order_then_its_totals(nats_url: str) -> None:
    produced: list[int] = []
    async with replica(nats_url) as server, replica(nats_url) as client:
        count_handler(server, produced, asyncio.Event())
        await server.bind()
        items = [item async for item in client.stream(CountRequest(n=10_000))]
        assert [t.index for t in items[:-1] if isinstance(t, Token)] == list(range(10_000))
        assert items[-1] == Totals(tokens=10_000)


async def test_a_failing_stream_raises_its_error_after_the_chunks_it_sent(nats_url: str) -> None:
    async with replica(nats_url) as server, replica(nats_url) as client:
        count_handler(server, [], asyncio.Event())
        await server.bind()
        got: list[int] = []
        with pytest.raises(RpcError) as caught:
            async for item in client.stream(CountRequest(n=10, fail_after=3)):
                assert isinstance(item, Token)
                got.append(item.index)
        assert got == [0, 1, 2]
        assert (caught.value.status, caught.value.field) == (409, "fail_after")


@pytest.mark.parametrize("how", ["break", "cancel"])
async def test_leaving_a_stream_early_stops_the_responder(nats_url: str, how: str) -> None:
    produced: list[int] = []
    closed = asyncio.Event()
    async with replica(nats_url) as server, replica(nats_url) as client:
        count_handler(server, produced, closed)
        await server.bind()
        first: list[int] = []

        async def read() -> None:
            async with contextlib.aclosing(client.stream(CountRequest(n=10**9))) as chunks:
                async for item in chunks:
                    assert isinstance(item, Token)
                    first.append(item.index)
                    if len(first) == 10:
                        if how == "break":
                            break
                        await asyncio.Event().wait()  # blocks until cancelled

        reader = asyncio.create_task(read())
        if how == "cancel":
            await wait_for(lambda: len(first) == 10)
            reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await asyncio.wait_for(closed.wait(), 10)  # the responder's generator was closed
        stopped_at = len(produced)
        assert stopped_at < DEFAULT_WINDOW + 20
        assert first == list(range(10))


async def test_a_slow_reader_holds_the_responder_to_its_window(nats_url: str) -> None:
    produced: list[int] = []
    async with replica(nats_url) as server, replica(nats_url) as client:
        count_handler(server, produced, asyncio.Event())
        await server.bind()
        window = 32
        chunks = client.stream(CountRequest(n=10_000), window=window)
        first = await anext(chunks)
        assert first == Token(index=0)
        await wait_for(lambda: len(produced) >= window)
        await asyncio.sleep(0.3)  # a responder ignoring the window would run on to 10,000 here
        assert len(produced) <= window + 1
        rest = [item async for item in chunks]
        assert len(rest) == 10_000  # 9,999 chunks and the totals
        assert rest[-1] == Totals(tokens=10_000)


async def test_trace_context_crosses_ask_and_stream(nats_url: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    seen: list[int] = []

    async with replica(nats_url, provider=provider) as server, replica(nats_url, provider=provider) as client:

        @server.handler(EchoRequest)
        async def echo(req: EchoRequest) -> EchoReply:
            seen.append(trace.get_current_span().get_span_context().trace_id)
            return EchoReply(text=req.text)

        count_handler(server, [], asyncio.Event())
        await server.bind()
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("caller") as caller:
            await client.ask(EchoRequest(text="traced"))
            _ = [item async for item in client.stream(CountRequest(n=3))]
        trace_id = caller.get_span_context().trace_id
    assert seen == [trace_id]
    spans = {(s.name, s.context.trace_id) for s in exporter.get_finished_spans()}
    assert (f"{CountRequest.SUBJECT} process", trace_id) in spans
    assert (f"{EchoRequest.SUBJECT} send", trace_id) in spans


async def test_a_malformed_error_frame_is_a_typed_502(nats_url: str) -> None:
    async with replica(nats_url) as client:
        nc = await nats.connect(nats_url)
        try:

            async def bad(msg: Msg) -> None:
                await nc.publish(msg.reply, b"oops", headers={"Mf-Rpc": "error"})

            await nc.subscribe(EchoRequest.SUBJECT, cb=bad)
            await nc.flush()
            with pytest.raises(RpcError) as caught:
                await client.ask(EchoRequest(text="hi"))
            assert (caught.value.status, caught.value.code) == (502, "upstream_failed")
        finally:
            await nc.close()


async def test_an_untraced_process_starts_no_trace_and_sends_no_trace_context(nats_url: str) -> None:
    """A provider with no span processor (nothing exports): its spans do not record and an ask made under one carries
    no traceparent, so the other side parses no header and starts no span; once a processor is added, it traces."""
    provider = traced_when_exported()
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("request") as untraced:
        assert not untraced.is_recording()
    async with replica(nats_url) as client:
        nc = await nats.connect(nats_url)
        headers: list[dict[str, str]] = []
        try:

            async def answer(msg: Msg) -> None:
                headers.append(dict(msg.headers or {}))
                await nc.publish(msg.reply, EchoReply(text="ok").model_dump_json().encode())

            await nc.subscribe(EchoRequest.SUBJECT, cb=answer)
            await nc.flush()
            with tracer.start_as_current_span("request"):
                await client.ask(EchoRequest(text="hi"))
            provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
            with tracer.start_as_current_span("request") as traced:
                assert traced.is_recording()
                await client.ask(EchoRequest(text="hi"))
        finally:
            await nc.close()
    assert "traceparent" not in headers[0]
    assert headers[1]["traceparent"].split("-")[1] == format(traced.get_span_context().trace_id, "032x")

"""Chat completions past OpenTelemetry's ASGI middleware when no trace covers them (gateway/server_measures.py), in
the real gateway app built in-process: which requests pass it by, and that those are measured exactly as the
middleware itself measures the same request (its own instruments, standing in here for what they receive)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.gateway.chat_fast_path import PATH
from services.gateway.server_measures import UntracedChat
from tests.harness.gateway_app import gateway_app

pytestmark = pytest.mark.unit

TOKEN = "server-measures-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PLAIN = {"model": "coding", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
#: A caller's trace context, not sampled: no span is recorded, but the middleware must carry it on
TRACEPARENT = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"}
INSTRUMENTS = (
    "duration_histogram_new",
    "active_requests_counter",
    "server_request_body_size_histogram",
    "server_response_body_size_histogram",
)


class Instrument:
    """Stands for one of the middleware's instruments: keeps each value recorded and its attributes."""

    def __init__(self) -> None:
        self.taken: list[tuple[float, dict[str, Any]]] = []

    def record(self, value: float, attributes: Any = None, context: Any = None) -> None:
        self.taken.append((value, dict(attributes or {})))

    add = record


class Passes:
    """The OpenTelemetry middleware, counting the requests that go through it."""

    def __init__(self, otel: Any) -> None:
        self.otel, self.app, self.count = otel, otel.app, 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.count += 1
        await self.otel(scope, receive, send)


class Stack:
    def __init__(self, client: httpx.AsyncClient, untraced: UntracedChat, passes: Passes):
        self.client, self.untraced, self.passes = client, untraced, passes
        self.instruments = {name: Instrument() for name in INSTRUMENTS}
        for name, instrument in self.instruments.items():
            setattr(untraced.measures.otel, name, instrument)  # the middleware's own, which both use

    def taken(self) -> dict[str, list[tuple[float, dict[str, Any]]]]:
        """What each instrument received since the last call."""
        taken = {name: instrument.taken for name, instrument in self.instruments.items()}
        for instrument in self.instruments.values():
            instrument.taken = []
        return taken


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    app = gateway_app(TOKEN)
    app.middleware_stack = app.build_middleware_stack()
    parent: Any = app.middleware_stack
    while not isinstance(getattr(parent, "app", None), UntracedChat):
        assert hasattr(parent, "app"), "no UntracedChat in the gateway's middleware stack"
        parent = parent.app
    untraced: UntracedChat = parent.app
    untraced.otel = Passes(untraced.otel)  # type: ignore[assignment]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        yield Stack(client, untraced, untraced.otel)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        (AUTH, PLAIN, 503),  # answered by the chat fast path: as far as the route ask (no NATS here)
        ({}, PLAIN, 401),  # no token
        ({**AUTH, "x-modelfleet-performance-profile": "no spaces allowed"}, PLAIN, 422),  # FastAPI's route judged it
        (AUTH, {"model": "coding"}, 422),  # no messages
    ],
)
async def test_an_untraced_chat_completion_passes_the_middleware_by_and_is_measured_as_it_measures(
    stack: Stack, headers: dict[str, str], body: dict[str, Any], status: int
) -> None:
    untraced = await stack.client.post(PATH, json=body, headers=headers)
    assert (untraced.status_code, stack.passes.count) == (status, 0)
    by_us = stack.taken()
    traced = await stack.client.post(PATH, json=body, headers={**headers, **TRACEPARENT})
    assert (traced.status_code, stack.passes.count) == (status, 1)
    by_the_middleware = stack.taken()
    assert traced.content == untraced.content

    for name in INSTRUMENTS:  # the same measurements, the same attributes; only the durations differ
        assert [a for _, a in by_us[name]] == [a for _, a in by_the_middleware[name]], name
    for name in INSTRUMENTS[1:]:
        assert [v for v, _ in by_us[name]] == [v for v, _ in by_the_middleware[name]], name
    (duration, attributes), = by_us["duration_histogram_new"]  # fmt: skip
    assert duration > 0
    assert attributes["http.route"] == PATH and attributes["http.response.status_code"] == status
    assert [v for v, _ in by_us["active_requests_counter"]] == [1, -1]
    assert by_us["server_response_body_size_histogram"] == [(len(untraced.content), attributes)]


async def test_every_other_request_goes_through_the_middleware(stack: Stack) -> None:
    await stack.client.get("/v1/models", headers=AUTH)
    await stack.client.post("/v1/embeddings", json={"model": "embed", "input": "x"}, headers=AUTH)
    await stack.client.get(PATH, headers=AUTH)  # a 405
    await stack.client.post(PATH, json=PLAIN, headers={**AUTH, "baggage": "tenant=a"})  # context to carry on
    assert stack.passes.count == 4


async def test_a_chat_completion_is_traced_whenever_spans_are_exported(stack: Stack) -> None:
    spans = InMemorySpanExporter()
    stack.untraced.provider.add_span_processor(SimpleSpanProcessor(spans))
    r = await stack.client.post(PATH, json=PLAIN, headers=AUTH)
    assert r.status_code == 503 and stack.passes.count == 1
    (server,) = [s for s in spans.get_finished_spans() if s.name == f"POST {PATH}"]
    assert server.attributes is not None and server.attributes["http.route"] == PATH
    assert server.attributes["http.response.status_code"] == 503

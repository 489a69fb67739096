"""The data plane's chat completions past OpenTelemetry's ASGI middleware when no trace covers them, measured alike.

OpenTelemetry's ASGI middleware (which the FastAPI instrumentation puts in the gateway's stack) does two things for
every request: the server span, and the HTTP server measurements (`http.server.request.duration`,
`http.server.active_requests`, `http.server.request.body.size`, `http.server.response.body.size`). Where no span is
recorded or passed on, the span part is pure cost: it parses the request's headers and address into attributes,
looks the route up again and starts a span that goes nowhere. On a small completion that was about 180 µs of Python
a request in a hot loop, and 0.6-0.9 ms of the gateway's added latency on the 2-core development machine
(docs/gateway.md "What it costs").

So a `POST /v1/chat/completions` that no trace covers — this process exports no spans, the request carries none of
the propagator's headers (`traceparent`, `tracestate`, `baggage`), and no response propagator is set — goes past
the middleware to the layer under it, and `ServerMeasures` makes the same four measurements on the middleware's own
instruments, with the attributes the middleware's own functions compute (cached per scheme, protocol version and
status: the only inputs that survive their filters). Every other request, and every request when spans are exported,
goes through the middleware as before. The rest of the stack (the error middlewares, the exception handlers, the
router, the chat fast path) is the same either way. Only with the stable HTTP conventions
(`OTEL_SEMCONV_STABILITY_OPT_IN=http`, which the gateway sets unless told otherwise); with `http/dup` every request
goes through the middleware.
"""

from __future__ import annotations

import logging
from timeit import default_timer
from typing import Any

from fastapi import FastAPI
from opentelemetry.instrumentation._semconv import _StabilityMode
from opentelemetry.instrumentation.asgi import (
    OpenTelemetryMiddleware,
    _parse_active_request_count_attrs,
    _parse_duration_attrs,
    collect_request_attributes,
    set_status_code,
)
from opentelemetry.instrumentation.propagators import get_global_response_propagator
from opentelemetry.propagate import get_global_textmap
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.semconv.attributes.http_attributes import HTTP_ROUTE
from opentelemetry.trace import INVALID_SPAN
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.chat_fast_path import PATH
from services.runtime.telemetry import exports_spans

log = logging.getLogger(__name__)

Attributes = dict[str, Any]


class ServerMeasures:
    """The HTTP server measurements `otel` makes of a request, made on its instruments for a request that passes it by.

    The route is the one request path it is used for (its template, as the FastAPI instrumentation names it)."""

    def __init__(self, otel: OpenTelemetryMiddleware, route: str):
        self.otel = otel
        self.route = route
        self._attributes: dict[tuple[Any, ...], tuple[Attributes, Attributes]] = {}

    def attributes(self, scope: Scope, status: int | None) -> tuple[Attributes, Attributes]:
        """The active-request and duration attributes of a request of `scope` answered `status` (None: no answer)."""
        key = (scope.get("scheme"), scope.get("http_version"), scope.get("method"), status)
        known = self._attributes.get(key)
        if known is None:
            mode = self.otel._sem_conv_opt_in_mode
            request = collect_request_attributes(scope, mode)  # type: ignore[no-untyped-call]
            request[HTTP_ROUTE] = self.route
            active = _parse_active_request_count_attrs(request, mode)  # type: ignore[no-untyped-call]
            if status is not None:
                set_status_code(INVALID_SPAN, status, request, mode)  # type: ignore[no-untyped-call]
            duration = _parse_duration_attrs(request, _StabilityMode.HTTP)  # type: ignore[no-untyped-call]
            known = self._attributes[key] = (active, duration)
        return known

    async def measured(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """`app` answering the request, measured as the middleware measures it."""
        started = default_timer()
        otel = self.otel
        active, _ = self.attributes(scope, None)
        otel.active_requests_counter.add(1, active)
        status: int | None = None
        response_size: int | None = None

        async def measured_send(message: Message) -> None:
            nonlocal status, response_size
            if message["type"] == "http.response.start":
                status = message["status"]
                response_size = _content_length(message.get("headers", ()))
            await send(message)

        try:
            await app(scope, receive, measured_send)
        finally:
            _, duration = self.attributes(scope, status)
            otel.duration_histogram_new.record(max(default_timer() - started, 0), duration)  # type: ignore[union-attr]
            otel.active_requests_counter.add(-1, active)
            if response_size and otel.server_response_body_size_histogram is not None:
                otel.server_response_body_size_histogram.record(response_size, duration)
            request_size = _content_length(scope["headers"])
            if request_size and otel.server_request_body_size_histogram is not None:
                otel.server_request_body_size_histogram.record(request_size, duration)


class UntracedChat:
    """In the middleware's place in the stack: a chat completion no trace covers goes to the layer under it, measured
    by `ServerMeasures`; anything else goes through the middleware."""

    def __init__(self, otel: OpenTelemetryMiddleware, provider: TracerProvider):
        self.otel = otel
        self.provider = provider
        self.measures = ServerMeasures(otel, PATH)
        self.context_headers = frozenset(field.encode() for field in get_global_textmap().fields)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST"
            or exports_spans(self.provider) or get_global_response_propagator() is not None  # type: ignore[no-untyped-call]
            or any(name in self.context_headers for name, _ in scope["headers"])
        ):  # fmt: skip
            await self.otel(scope, receive, send)
            return
        await self.measures.measured(self.otel.app, scope, receive, send)


def install(app: FastAPI, provider: TracerProvider) -> None:
    """Put `UntracedChat` in the place of the app's OpenTelemetry middleware when the app builds its middleware stack
    (after `FastAPIInstrumentor.instrument_app`, which builds the middleware into the stack the same way)."""
    build = app.build_middleware_stack

    def build_middleware_stack() -> ASGIApp:
        stack = build()
        parent: Any = stack
        while (child := getattr(parent, "app", None)) is not None:
            if isinstance(child, OpenTelemetryMiddleware):
                if child._sem_conv_opt_in_mode == _StabilityMode.HTTP and child.duration_histogram_new is not None:
                    parent.app = UntracedChat(child, provider)
                return stack
            parent = child
        log.warning("no OpenTelemetry middleware in the gateway's stack: chat completions measured by none")
        return stack

    app.build_middleware_stack = build_middleware_stack  # type: ignore[method-assign]


def _content_length(headers: Any) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None

"""The gateway's /v1/ series (docs/observability.md), per the OpenTelemetry gen_ai semantic conventions where one
exists: request duration, time to first token, token usage; and ours: output tokens per second, the gateway's own
overhead, the backend each request was served by and why.

HTTP requests of every route (by route template, method and status) are the FastAPI instrumentation's
`http.server.request.duration`: `stable_http_semconv()` selects the stable HTTP conventions before it is installed.
One `Exchange` follows each /v1/ chat or embeddings request from its arrival to its last byte.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation

from services.runtime.metrics import meter

#: /v1/ paths and their gen_ai operation names (others are not gen_ai operations: /v1/models, unknown paths).
OPERATIONS = {"/v1/chat/completions": "chat", "/v1/embeddings": "embeddings"}

_meter = meter("modelfleet.gateway")
_duration = _meter.create_histogram(
    "gen_ai.server.request.duration",
    unit="s",
    description="A /v1/ request from its arrival to its last byte (a stream's end), by operation, role and status",
)
_ttft = _meter.create_histogram(
    "gen_ai.server.time_to_first_token",
    unit="s",
    description="A streamed chat's arrival to its first chunk in hand (routing and any failed backend included)",
)
_tokens = _meter.create_histogram(
    "gen_ai.client.token.usage",
    unit="{token}",
    description="Tokens of each request, gen_ai.token.type input or output (the backend's count, else the estimate)",
)
_tokens_per_s = _meter.create_histogram(
    "modelfleet.gateway.output_tokens_per_second",
    unit="{token}/s",
    description="Completion tokens over the answering backend call's duration",
)
_overhead = _meter.create_histogram(
    "modelfleet.gateway.overhead",
    unit="s",
    description="Time up to the answer's first byte not spent waiting on backends (routing, the gateway's own work)",
)
_served = _meter.create_counter(
    "modelfleet.gateway.backend.selections",
    unit="{request}",
    description="/v1/ requests by the backend that answered (host, kind) and the route's reason",
)

#: how many route asks this process's memo of reusable routes has answered (services/gateway/route_memo.py), read at
#: scrape; set by the app
_reuse_count: Callable[[], int] = lambda: 0  # noqa: E731 - replaced by `count_route_reuses`


def _observe_reuses(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(_reuse_count())]


_meter.create_observable_counter(
    "modelfleet.gateway.route.reuses",
    callbacks=[_observe_reuses],
    unit="{request}",
    description="Route asks answered with a reply the router offered for reuse, without a bus round trip",
)


def count_route_reuses(count: Callable[[], int]) -> None:
    """Report `count()` (the app's memo's reuses so far) in `modelfleet.gateway.route.reuses`."""
    global _reuse_count
    _reuse_count = count


def stable_http_semconv() -> None:
    """The FastAPI instrumentation records `http.server.request.duration` in seconds with `http.route`,
    `http.request.method` and `http.response.status_code` (the stable HTTP conventions) unless told otherwise."""
    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")


@dataclass
class Exchange:
    """One /v1/ request's measurements; `finish` records the request once (a second call does nothing)."""

    operation: str
    arrived: float
    #: Set once the route answered: a name the fleet knows (never a client's arbitrary string, to bound the series).
    model: str = ""
    role: str = ""
    provider: str = ""
    backend_s: float = 0.0
    done: bool = False

    def routed(self, model: str, role: str | None) -> None:
        self.model, self.role = model, role or ""

    def served(self, host: str, kind: str, reason: str, retries: int, overhead_s: float, backend_s: float) -> None:
        """The backend answered (its first chunk, for a stream): count it, and the gateway's overhead."""
        self.provider, self.backend_s = kind, backend_s
        where = {"modelfleet.backend.host": host, "modelfleet.backend.kind": kind, "modelfleet.route.reason": reason}
        _served.add(1, {**self.base(), **where, "modelfleet.route.retried": str(retries > 0).lower()})
        _overhead.record(max(overhead_s, 0.0), self.base())

    def first_token(self, at: float) -> None:
        _ttft.record(at - self.arrived, self.with_provider())

    def tokens(self, prompt: int, completion: int | None, generation_s: float | None = None) -> None:
        attrs = self.with_provider()
        _tokens.record(prompt, {**attrs, "gen_ai.token.type": "input"})
        if completion is not None:
            _tokens.record(completion, {**attrs, "gen_ai.token.type": "output"})
            if generation_s and generation_s > 0 and completion > 0:
                _tokens_per_s.record(completion / generation_s, attrs)

    def finish(self, status: int, error: str | None = None) -> None:
        if self.done:
            return
        self.done = True
        attrs = {**self.with_provider(), "http.response.status_code": str(status)}
        if error is not None or status >= 400:
            attrs["error.type"] = error or str(status)
        _duration.record(time.perf_counter() - self.arrived, attrs)

    def base(self) -> dict[str, str]:
        return {
            "gen_ai.operation.name": self.operation,
            "gen_ai.request.model": self.model,
            "modelfleet.role": self.role,
        }

    def with_provider(self) -> dict[str, str]:
        return {**self.base(), "gen_ai.provider.name": self.provider}


def exchange_of(state: Any) -> Exchange | None:
    """The request's exchange (`request.state`), when the path is a gen_ai operation."""
    got = getattr(state, "exchange", None)
    return got if isinstance(got, Exchange) else None

"""The data plane's use cases: ask the router where, call the backend, go down the fallback chain until the first byte
is out, report every call."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from opentelemetry import trace

from contracts.router import BackendRef, RouteCandidate, RouteReply, RouteRequest
from contracts.rpc import RpcError
from services.gateway.backends import Backend, BackendError, ChatCall
from services.gateway.bus_client import BusClient
from services.gateway.call_reports import CallReporter
from services.gateway.route_memo import RouteMemo

T = TypeVar("T")
#: How long a name the catalog said is no role is asked as a model name at once.
ROLE_MEMO_S = 5.0


class NoBackendAnswered(RpcError):
    """Every backend of the chain failed before the first byte; `retry_after` is set when each one said 429."""

    def __init__(self, status: int, detail: str, *, code: str, field: str | None, retry_after: str | None = None):
        super().__init__(status, detail, code=code, field=field)
        self.retry_after = retry_after


class LocalRouter(Protocol):
    """A router replica in the gateway's own process (`python -m services.gateway_router`, docs/gateway.md): the
    gateway starts and stops it with itself and, once it is `ready` (it has folded what the streams held when it
    started), asks it for routes directly instead of over the bus."""

    @property
    def ready(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def route(self, request: RouteRequest) -> RouteReply: ...


@dataclass
class Served(Generic[T]):
    """What a backend answered, which one, after how many failed tries, and the time spent waiting on backends."""

    value: T
    target: RouteCandidate
    retries: int
    backend_ms: float
    last_ms: float


@dataclass
class Opened:
    """A stream whose first chunk is in hand (so the answer can commit to a 200), and the rest of it."""

    served: Served[dict[str, Any]]
    rest: AsyncIterator[dict[str, Any]]


class DataPlane:
    """One chat or embedding request: `route` (one `rpc.router.route.v1` ask, or a reply the router offered for reuse,
    services/gateway/route_memo.py), then `complete`, `open_stream` or `embed` on the route's backend and, failing
    that, on each entry of its fallback chain in order."""

    def __init__(
        self,
        bus: BusClient,
        backends: Mapping[str, Backend],
        reporter: CallReporter,
        *,
        route_timeout_s: float,
        busy_retry_after_s: int = 1,
        provision_wait_s: float = 0.0,
        clock: Callable[[], float] = time.perf_counter,
        local_router: LocalRouter | None = None,
        memo: RouteMemo | None = None,
    ):
        self.bus = bus
        self.memo = memo
        self.local_router = local_router
        self.backends = backends
        self.reporter = reporter
        self.route_timeout_s = route_timeout_s
        self.busy_retry_after_s = busy_retry_after_s
        self.provision_wait_s = provision_wait_s
        self.clock = clock
        self._not_roles: dict[str, float] = {}

    async def route(
        self,
        model: str,
        user_id: str,
        options: Mapping[str, Any] | None = None,
        prompt_tokens: int | None = None,
        *,
        performance_profile: str | None = None,
    ) -> RouteReply:
        """`model` is `role:<name>`, a profile id, a role or a model name. A bare name is asked as a role first; when
        the catalog knows no such role it is a model name (remembered a few seconds, so the next ask goes straight)."""
        common: dict[str, Any] = {"user_id": user_id, "options": dict(options or {}), "prompt_tokens": prompt_tokens,
                                  "provision_wait_s": self.provision_wait_s,
                                  "performance_profile": performance_profile}  # fmt: skip
        name = model.strip()
        if name.startswith("role:"):
            return await self._ask(RouteRequest(role=name, **common))
        try:
            return await self._ask(RouteRequest(profile_id=uuid.UUID(name), **common))
        except ValueError:
            pass
        now = time.monotonic()
        if self._not_roles.get(name, 0.0) < now:
            try:
                return await self._ask(RouteRequest(role=name, **common))
            except RpcError as exc:
                if exc.status != 404 or exc.field != "role":
                    raise
            if len(self._not_roles) > 4096:  # bounded: stale names go first
                self._not_roles = {k: v for k, v in self._not_roles.items() if v > now}
            self._not_roles[name] = now + ROLE_MEMO_S
        return await self._ask(RouteRequest(model=name, **common))

    async def _ask(self, request: RouteRequest, *, reuse: bool = True) -> RouteReply:
        # The router may hold the answer while an auto_download role's model is pulled (bounded by what we ask).
        bound_s = self.route_timeout_s + self.provision_wait_s
        local = self.local_router
        if local is None or not local.ready:
            memo = self.memo
            if memo is None or not reuse:
                return await self.bus.ask(request, timeout_s=bound_s)
            hit = memo.get(request)
            if hit is not None:
                trace.get_current_span().set_attribute("modelfleet.route.reused", True)  # no-op when untraced
                return hit
            generation = memo.generation
            reply = await self.bus.ask(request, timeout_s=bound_s)
            memo.keep(request, reply, generation)
            return reply
        try:
            async with asyncio.timeout(bound_s):
                return await local.route(request)
        except TimeoutError:  # the same answer as a bus ask that times out
            raise RpcError(504, f"no route decision within {bound_s:g} s", code="timeout") from None

    def forget_routes(self) -> None:
        """Something may have changed a reused decision (a failed call, a router's or the catalog's event): every
        route is asked for again."""
        if self.memo is not None:
            self.memo.forget()

    async def decide(self, request: RouteRequest) -> RouteReply:
        """`POST /api/v1/route`'s ask: the gateway's `provision_wait_s` as `/v1/` sends it (unless the request names
        its own), and the ask's timeout grown by as much."""
        if request.provision_wait_s is None:
            request = request.model_copy(update={"provision_wait_s": self.provision_wait_s})
        return await self._ask(request, reuse=False)  # a fresh decision: what the router would answer now

    async def complete(self, reply: RouteReply, call: ChatCall) -> Served[dict[str, Any]]:
        return await self._first_answer(reply, lambda b, t: b.complete(t.backend.base_url, t.model_name, call))

    async def open_stream(self, reply: RouteReply, call: ChatCall) -> Opened:
        streams: dict[int, AsyncIterator[dict[str, Any]]] = {}

        async def first_chunk(backend: Backend, target: RouteCandidate) -> dict[str, Any]:
            stream = streams[id(target)] = backend.stream(target.backend.base_url, target.model_name, call)
            try:
                return await anext(stream)
            except StopAsyncIteration:
                raise BackendError("error", "the backend's stream ended before its first chunk") from None

        served = await self._first_answer(reply, first_chunk, report_success=False)
        stream = streams[id(served.target)]
        return Opened(served, self._rest(stream, served.target, self.clock() - served.last_ms / 1000, served.last_ms))

    async def embed(self, reply: RouteReply, texts: list[str]) -> Served[tuple[list[list[float]], int]]:
        return await self._first_answer(reply, lambda b, t: b.embed(t.backend.base_url, t.model_name, texts))

    @staticmethod
    def targets(reply: RouteReply) -> list[RouteCandidate]:
        """The chosen backend, then the fallback chain in order."""
        backend = reply.backend or BackendRef(
            host_id=reply.host_id or "unknown", kind="ollama", base_url=reply.backend_url or ""
        )
        first = RouteCandidate(backend=backend, model_name=reply.model_name or reply.model_ref,
                               model_ref=reply.model_ref)  # fmt: skip
        return [first, *reply.fallback_chain]

    async def _first_answer(
        self,
        reply: RouteReply,
        attempt: Callable[[Backend, RouteCandidate], Awaitable[T]],
        *,
        report_success: bool = True,
    ) -> Served[T]:
        failures: list[tuple[RouteCandidate, BackendError]] = []
        backend_ms = 0.0
        for tries, target in enumerate(self.targets(reply)):
            backend = self.backends.get(target.backend.kind)
            if backend is None:  # a kind this gateway cannot call (a newer router): try the next
                failures.append(
                    (target, BackendError("error", f"no caller for backends of kind {target.backend.kind}"))
                )
                continue
            limit = target.backend.max_in_flight
            if limit is not None and self.reporter.open_calls(target.backend) >= limit:
                # This gateway's own count is exact (the router's lags by a report): never a call over the limit.
                # Nothing was sent, so nothing is reported; the next entry of the chain may have room.
                busy = f"at its concurrency limit ({limit} calls in flight from this gateway)"
                failures.append((target, BackendError("rate_limited", busy, retry_after=str(self.busy_retry_after_s))))
                continue
            self.reporter.started(target.backend)
            started = self.clock()
            try:
                value = await attempt(backend, target)
            except BackendError as exc:
                spent = (self.clock() - started) * 1000
                backend_ms += spent
                self.reporter.finished(target.backend, target.model_name, exc.outcome, latency_ms=spent,
                                       status_code=exc.status)  # fmt: skip
                if not exc.retryable:  # the request's own fault: every backend would refuse it
                    raise RpcError(exc.status or 502, f"the backend refused the request: {exc}",
                                   code="backend_refused") from None  # fmt: skip
                self.forget_routes()
                failures.append((target, exc))
                continue
            except BaseException:  # cancelled (the client left): the call ended but told nothing about the backend
                self.reporter.abandoned(target.backend)
                raise
            spent = (self.clock() - started) * 1000
            backend_ms += spent
            if report_success:
                self.reporter.finished(target.backend, target.model_name, "ok", latency_ms=spent)
            return Served(value, target, tries, backend_ms, spent)
        raise _exhausted(reply, failures, str(self.busy_retry_after_s))

    async def _rest(
        self, stream: AsyncIterator[dict[str, Any]], target: RouteCandidate, started: float, ttft_ms: float
    ) -> AsyncIterator[dict[str, Any]]:
        """The stream after its first chunk; its end (or its failure) is reported with the time to first token."""
        outcome: Any = "ok"
        status: int | None = None
        try:
            async for item in stream:
                yield item
        except BackendError as exc:
            outcome, status = exc.outcome, exc.status
            self.forget_routes()
            raise
        finally:
            # Reported before closing: a cancelled close must not lose the in-flight decrement. A client that left
            # mid-stream ends the call as well; the backend did its part, so it counts as ok.
            self.reporter.finished(target.backend, target.model_name, outcome, latency_ms=(self.clock() - started)
                                   * 1000, ttft_ms=ttft_ms, status_code=status)  # fmt: skip
            await _close(stream)


async def _close(stream: AsyncIterator[dict[str, Any]]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


def _exhausted(
    reply: RouteReply, failures: list[tuple[RouteCandidate, BackendError]], default_retry_after: str
) -> NoBackendAnswered:
    if reply.role:
        what, field = f"role {reply.role!r}", "role"
    else:
        what, field = f"model {reply.model_ref!r}", "model"
    tried = "; ".join(f"{t.backend.host_id} {t.backend.base_url} ({t.model_name}): {e}" for t, e in failures)
    if failures and all(e.outcome == "rate_limited" for _, e in failures):
        hints = (e.retry_after or default_retry_after for _, e in failures)
        retry_after = max(hints, key=lambda v: float(v) if v.isdigit() else 1)
        return NoBackendAnswered(429, f"{what}: every backend is at its limit: {tried}", code="rate_limited",
                                 field=field, retry_after=retry_after)  # fmt: skip
    return NoBackendAnswered(503, f"{what}: no backend answered: {tried}", code="no_backend", field=field)

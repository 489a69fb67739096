"""The typed request/reply seam: handlers, `ask`, `stream` and `gather` over core NATS, traced, with one error reply.

A handler reads `async def resolve(req: ResolveRequest) -> ResolveReply`; an `RpcError` it raises becomes the typed
error reply, an undecodable or invalid request a 422 naming the field (counted), any other fault a 500/503 — never a
silent timeout. Streams send chunk frames under a credit window, so a slow reader never makes the responder buffer
without bound, and a caller that stops (cancel, `break`, an exception) tells the responder to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import ValidationError

from contracts.envelope import Contract
from contracts.rpc import (
    RPC_HEADER,
    WINDOW_HEADER,
    Credit,
    ErrorReply,
    Frame,
    RpcError,
    RpcRequest,
    StreamEnd,
    StreamRequest,
)
from services.runtime.metrics import meter
from services.runtime.tasks import settle

log = logging.getLogger(__name__)

Req = TypeVar("Req", bound=Contract)
Rep = TypeVar("Rep", bound=Contract)
Chunk = TypeVar("Chunk", bound=Contract)
End = TypeVar("End", bound=Contract)

Handler = Callable[[Any], Awaitable[Contract]]
StreamHandler = Callable[[Any], AsyncIterator[Contract]]
#: Turns an exception a handler let through into the typed error (None: a 500 or 503 by the default rule).
Translate = Callable[[Exception], RpcError | None]

#: Chunks a stream may have in flight before the responder waits for credit.
DEFAULT_WINDOW = 256
_PROPAGATOR = TraceContextTextMapPropagator()
_ERROR_HEADERS = {RPC_HEADER: Frame.ERROR.value}
_NO_RESPONDERS = "503"
#: Pauses before asking again after a "no responders": nats-server can answer it for a subscription another
#: connection made (and flushed) a moment earlier (nats-io/nats-server#2876), so a just-started service would
#: look absent. Two re-asks 20 + 40 ms apart cover that window; a subject nobody serves still gets its 503 at once.
_REASK_AFTER_S = (0.02, 0.04)

#: Requests answered by (subject, kind, outcome), and error replies by (subject, kind, status, code), for the whole
#: process. Plain counters on the hot path (an SDK `add` costs microseconds); observable counters report them.
_answered: Counter[tuple[str, str, str]] = Counter()
_errors: Counter[tuple[str, str, str, str]] = Counter()


def _observe_answered(options: CallbackOptions) -> Iterable[Observation]:
    return [
        Observation(n, {"rpc.subject": subject, "rpc.kind": kind, "rpc.outcome": outcome})
        for (subject, kind, outcome), n in dict(_answered).items()
    ]


def _observe_errors(options: CallbackOptions) -> Iterable[Observation]:
    return [
        Observation(n, {"rpc.subject": s, "rpc.kind": k, "rpc.response.status_code": status, "error.type": code})
        for (s, k, status, code), n in dict(_errors).items()
    ]


_meter = meter("modelfleet.runtime")
_meter.create_observable_counter(
    "modelfleet.rpc.requests",
    callbacks=[_observe_answered],
    unit="{request}",
    description="Requests this process answered, by subject and outcome",
)
_meter.create_observable_counter(
    "modelfleet.rpc.failures",
    callbacks=[_observe_errors],
    unit="{request}",
    description="Requests answered with an error reply, by status and code",
)
_duration = _meter.create_histogram(
    "modelfleet.rpc.server.duration", unit="s", description="Time from a request's arrival to its (last) answer"
)


def _record(reg: Registration, seconds: float, error: RpcError | None) -> None:
    _answered[(reg.subject, reg.kind, "ok" if error is None else "error")] += 1
    if error is not None:
        _errors[(reg.subject, reg.kind, str(error.status), error.code or "error")] += 1
    _duration.record(seconds, {"rpc.subject": reg.subject, "rpc.kind": reg.kind})


def invalid_request(exc: ValidationError, what: str) -> RpcError:
    """A 422 naming every field at fault (`profile.name: String should have at most 64 characters`)."""
    errors = exc.errors(include_url=False)
    paths = [".".join(map(str, e["loc"])) for e in errors]
    detail = "; ".join(f"{p or '(body)'}: {e['msg']}" for p, e in zip(paths, errors, strict=True))
    return RpcError(422, f"{what}: {detail}" if detail else what, code="invalid_request", field=paths[0] or None)


def _default_translate(exc: Exception) -> RpcError:
    text = f"{type(exc).__name__}: {exc}"[:500]
    transient = isinstance(exc, ConnectionError | TimeoutError) or "connect" in str(exc).lower()
    return RpcError(503, text, code="unavailable") if transient else RpcError(500, text, code="internal")


@dataclass(frozen=True)
class Registration:
    """One `rpc.*` subject a process answers; the AsyncAPI documents are generated from these."""

    subject: str
    request: type[Contract]
    reply: type[Contract]
    kind: str  # "reply" (one answer), "stream" (chunks, then an end frame)
    queue: str | None  # None: every replica answers (scatter-gather)
    description: str
    call: Callable[..., Any] = field(compare=False, repr=False)
    end: type[Contract] | None = None
    concurrency: int = 64


@dataclass
class RpcStats:
    """Per-subject counters: served, failed (an error reply sent), invalid (a 422 for an undecodable request)."""

    served: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    invalid: Counter[str] = field(default_factory=Counter)


class Rpc:
    """One process's side of the seam, on its broker's NATS connection. `bind()` once connected."""

    def __init__(
        self,
        broker: NatsBroker,
        service: str,
        tracer_provider: TracerProvider | None = None,
        *,
        translate: Translate | None = None,
    ) -> None:
        self.broker = broker
        self.service = service
        self.tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer("modelfleet.rpc")
        self.translate = translate
        self.registrations: list[Registration] = []
        self.asks: set[type[Contract]] = set()
        self.stats = RpcStats()
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()

    # --- the responder side ----------------------------------------------------------------------------------------

    def handler(
        self,
        request: type[RpcRequest[Rep]],
        *,
        subject: str | None = None,
        queue: str | None = "",
        concurrency: int = 64,
    ) -> Callable[[Callable[[Any], Awaitable[Rep]]], Callable[[Any], Awaitable[Rep]]]:
        """Register `async def f(req: Request) -> Reply` on the request's subject (or `subject`, a filled template).

        `queue=""` (the default) joins the queue group named for the service, so replicas share the load;
        `queue=None` makes every replica answer (health, scatter-gather).
        """

        def register(fn: Callable[[Any], Awaitable[Rep]]) -> Callable[[Any], Awaitable[Rep]]:
            self._register(fn, request, request.REPLY, "reply", subject, queue, concurrency)
            return fn

        return register

    def stream_handler(
        self, request: type[StreamRequest[Chunk, End]], *, subject: str | None = None, queue: str | None = ""
    ) -> Callable[[Callable[[Any], AsyncIterator[Chunk | End]]], Callable[[Any], AsyncIterator[Chunk | End]]]:
        """Register an async generator `async def f(req) -> AsyncIterator[Chunk | End]`: it yields chunks, then
        (optionally) one `End` with the totals. A caller's cancel closes the generator (its `finally` runs)."""

        def register(fn: Callable[[Any], AsyncIterator[Chunk | End]]) -> Callable[[Any], AsyncIterator[Chunk | End]]:
            self._register(fn, request, request.CHUNK, "stream", subject, queue, 64, end=request.END)
            return fn

        return register

    def _register(
        self,
        fn: Callable[..., Any],
        request: type[Contract],
        reply: type[Contract],
        kind: str,
        subject: str | None,
        queue: str | None,
        concurrency: int,
        end: type[Contract] | None = None,
    ) -> None:
        subject = subject or request.SUBJECT
        if not subject or "{" in subject:
            raise ValueError(f"{request.__name__}: give the filled subject (template {request.SUBJECT!r})")
        group = self.service if queue == "" else queue
        doc = (fn.__doc__ or "").strip()
        self.registrations.append(Registration(subject, request, reply, kind, group, doc, fn, end, concurrency))

    async def bind(self) -> None:
        """Subscribe every registered handler on the broker's connection (after `broker.connect()`); idempotent."""
        if self._subs:
            return
        nc: NatsClient = self.broker.connection
        for reg in self.registrations:
            limit = asyncio.Semaphore(reg.concurrency)

            async def on_message(msg: Msg, reg: Registration = reg, limit: asyncio.Semaphore = limit) -> None:
                # Each request runs in its own task: a slow one must not hold up the next on the same subject.
                task = asyncio.create_task(self._limited(limit, reg, msg))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

            self._subs.append(await nc.subscribe(reg.subject, queue=reg.queue or "", cb=on_message))
        await nc.flush()  # the server knows every subscription before anyone is told this process is up

    async def close(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        for task in list(self._tasks):
            task.cancel()
        await settle(list(self._tasks), f"{self.service}: request handler")

    async def _limited(self, limit: asyncio.Semaphore, reg: Registration, msg: Msg) -> None:
        async with limit:
            if reg.kind == "stream":
                await self._serve_stream(reg, msg)
            else:
                await self._serve(reg, msg)

    def _decode(self, reg: Registration, msg: Msg) -> Contract:
        try:
            return reg.request.model_validate_json(msg.data or b"{}")
        except ValidationError as exc:
            self.stats.invalid[reg.subject] += 1
            log.warning("%s: refused an invalid request: %s", reg.subject, exc.errors(include_url=False)[:3])
            raise invalid_request(exc, f"invalid {reg.request.__name__}") from None

    def _error(self, reg: Registration, exc: Exception) -> RpcError:
        if isinstance(exc, RpcError):
            return exc
        translated = self.translate(exc) if self.translate else None
        if translated is None:
            log.error("%s: handler failed", reg.subject, exc_info=exc)
            translated = _default_translate(exc)
        return translated

    async def _serve(self, reg: Registration, msg: Msg) -> None:
        started = time.perf_counter()
        with self._server_span(reg.subject, msg) as span:
            headers: dict[str, str] | None = None
            error: RpcError | None = None
            try:
                reply = await reg.call(self._decode(reg, msg))
                data = reply.model_dump_json().encode()
                self.stats.served[reg.subject] += 1
            except Exception as exc:
                error = self._error(reg, exc)
                self.stats.failed[reg.subject] += 1
                span.set_status(Status(StatusCode.ERROR, error.code))
                span.set_attribute("rpc.error.status", error.status)
                data, headers = ErrorReply(error=error.body).model_dump_json().encode(), _ERROR_HEADERS
            if msg.reply:
                await self.broker.connection.publish(msg.reply, data, headers=headers)
            # The reply goes out first: the client's flusher runs at the next turn of the loop, so the metrics
            # (microseconds of SDK work) are recorded after it, off the caller's round trip.
            asyncio.get_running_loop().call_soon(_record, reg, time.perf_counter() - started, error)

    async def _serve_stream(self, reg: Registration, msg: Msg) -> None:
        nc: NatsClient = self.broker.connection
        if not msg.reply:
            return
        credit = _Credit(_window(msg.headers))
        control = nc.new_inbox()
        sent = 0
        started = time.perf_counter()
        with self._server_span(reg.subject, msg) as span:
            pump: asyncio.Task[Contract | None] | None = None

            async def on_control(ctl: Msg) -> None:
                frame = (ctl.headers or {}).get(RPC_HEADER)
                if frame == Frame.CANCEL:
                    credit.cancelled = True
                    if pump is not None:
                        pump.cancel()
                elif frame == Frame.CREDIT:
                    with contextlib.suppress(ValidationError):
                        credit.grant(Credit.model_validate_json(ctl.data).grant)

            sub = await nc.subscribe(control, cb=on_control)
            await nc.publish(msg.reply, b"", reply=control, headers={RPC_HEADER: Frame.START.value})

            async def run() -> Contract | None:
                nonlocal sent
                gen = reg.call(self._decode(reg, msg))
                try:
                    async for item in gen:
                        if reg.end is not None and isinstance(item, reg.end):
                            return item
                        await credit.take()
                        await nc.publish(msg.reply, item.model_dump_json().encode())
                        sent += 1
                    return None
                finally:
                    await gen.aclose()

            end = StreamEnd(chunks=0)
            try:
                pump = asyncio.create_task(run())
                totals = await pump
                end = StreamEnd(chunks=sent, totals=totals.model_dump(mode="json") if totals is not None else None)
                self.stats.served[reg.subject] += 1
                _record(reg, time.perf_counter() - started, None)
            except asyncio.CancelledError:
                if not credit.cancelled:
                    raise  # we are being shut down, not cancelled by the caller
                span.set_attribute("rpc.stream.cancelled", True)
                log.info("%s: the caller cancelled after %d chunks", reg.subject, sent)
                return
            except Exception as exc:
                error = self._error(reg, exc)
                self.stats.failed[reg.subject] += 1
                _record(reg, time.perf_counter() - started, error)
                span.set_status(Status(StatusCode.ERROR, error.code))
                end = StreamEnd(chunks=sent, error=error.body)
            finally:
                await sub.unsubscribe()
            span.set_attribute("rpc.stream.chunks", sent)
            await nc.publish(msg.reply, end.model_dump_json().encode(), headers={RPC_HEADER: Frame.END.value})

    # Spans continue a trace; the seam starts none of its own (an untraced call costs no span on either side).

    def _client_span(self, subject: str) -> AbstractContextManager[Span]:
        if not trace.get_current_span().is_recording():
            return contextlib.nullcontext(trace.INVALID_SPAN)
        return self.tracer.start_as_current_span(
            f"{subject} send", kind=SpanKind.CLIENT, attributes=_span_attributes(subject)
        )

    def _server_span(self, subject: str, msg: Msg) -> AbstractContextManager[Span]:
        if not msg.headers or "traceparent" not in msg.headers:
            return contextlib.nullcontext(trace.INVALID_SPAN)
        return self.tracer.start_as_current_span(
            f"{subject} process",
            context=_PROPAGATOR.extract(msg.headers),
            kind=SpanKind.SERVER,
            attributes=_span_attributes(subject),
        )

    # --- the caller side -------------------------------------------------------------------------------------------

    def _connection(self, subject: str) -> NatsClient:
        nc: NatsClient | None = getattr(self.broker, "_connection", None)
        if nc is None or not nc.is_connected:
            raise RpcError(503, f"{subject}: NATS is not connected", code="bus_unavailable")
        return nc

    async def ask(self, request: RpcRequest[Rep], *, timeout_s: float = 5.0, subject: str | None = None) -> Rep:
        """Send `request` and return its reply; raise the typed `RpcError` it answered, a 504 naming the subject
        and the time waited when nobody answered in time, or a 503 when nobody serves the subject."""
        subject = subject or request.SUBJECT
        nc = self._connection(subject)
        headers: dict[str, str] = {}
        with self._client_span(subject) as span:
            _inject_sampled(headers)
            try:
                msg = await self._request(nc, subject, request.model_dump_json().encode(), timeout_s, headers)
            except NoRespondersError:
                raise RpcError(503, f"no service answers {subject}", code="no_responders") from None
            except (NatsTimeoutError, TimeoutError):
                raise RpcError(504, f"no answer on {subject} within {timeout_s:g} s", code="timeout") from None
            reply_type: type[Rep] = type(request).REPLY  # type: ignore[assignment]
            if (msg.headers or {}).get(RPC_HEADER) == Frame.ERROR:
                error = _error_of(subject, msg.data)
                span.set_status(Status(StatusCode.ERROR, error.code))
                raise error
            try:
                return reply_type.model_validate_json(msg.data)
            except ValidationError as exc:
                raise RpcError(502, f"{subject}: the reply is not a {reply_type.__name__}: {exc}"[:2000]) from None

    @staticmethod
    async def _request(nc: NatsClient, subject: str, data: bytes, timeout_s: float, headers: dict[str, str]) -> Msg:
        """One request, asked again after a short pause while the server says nobody serves it (`_REASK_AFTER_S`)."""
        for pause in (*_REASK_AFTER_S, None):
            try:
                return await nc.request(subject, data, timeout=timeout_s, headers=headers or None)
            except NoRespondersError:
                if pause is None:
                    raise
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    async def stream(
        self,
        request: StreamRequest[Chunk, End],
        *,
        timeout_s: float = 30.0,
        subject: str | None = None,
        window: int = DEFAULT_WINDOW,
    ) -> AsyncIterator[Chunk | End]:
        """Yield the chunks of a streamed reply in order, then its `End` (when the responder sent totals).

        `timeout_s` bounds the wait for the first frame and between frames. Leaving the loop early (break,
        an exception, the task cancelled) tells the responder to stop; a failed stream raises its `RpcError`.
        """
        subject = subject or request.SUBJECT
        nc = self._connection(subject)
        chunk_type, end_type = type(request).CHUNK, type(request).END
        frames: asyncio.Queue[Msg] = asyncio.Queue()
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=_enqueue(frames))
        control: str | None = None
        finished = False
        received = 0
        half = max(1, window // 2)
        headers: dict[str, str] = {WINDOW_HEADER: str(window)}
        # Not the current span: a generator's suspended frames must not leave a context attached in the caller's.
        span = (
            self.tracer.start_span(f"{subject} send", kind=SpanKind.CLIENT, attributes=_span_attributes(subject))
            if trace.get_current_span().is_recording()
            else trace.INVALID_SPAN
        )
        _PROPAGATOR.inject(headers, context=trace.set_span_in_context(span))
        try:
            payload = request.model_dump_json().encode()
            await nc.publish(subject, payload, reply=inbox, headers=headers)
            reasks = list(_REASK_AFTER_S)
            while True:
                msg = await _next_frame(frames, subject, timeout_s, started=control is not None)
                frame = (msg.headers or {}).get(RPC_HEADER) if msg.headers else None
                if frame is None and (msg.headers or {}).get("Status") != _NO_RESPONDERS:
                    received += 1
                    yield chunk_type.model_validate_json(msg.data)  # type: ignore[misc]
                    if received % half == 0 and control is not None:
                        await nc.publish(control, Credit(grant=half).model_dump_json().encode(), headers=_CREDIT)
                elif frame == Frame.START:
                    control = msg.reply
                elif frame == Frame.END:
                    finished = True
                    try:
                        end = StreamEnd.model_validate_json(msg.data)
                    except ValidationError as exc:
                        raise RpcError(502, f"{subject}: a malformed end frame: {exc}"[:2000]) from None
                    span.set_attribute("rpc.stream.chunks", received)
                    if end.error is not None:
                        raise RpcError.from_body(end.error)
                    if end.chunks != received:
                        raise RpcError(
                            502, f"{subject}: {end.chunks - received} of {end.chunks} chunks were lost",
                            code="stream_incomplete",
                        )  # fmt: skip
                    if end.totals is not None:
                        yield end_type.model_validate(end.totals)  # type: ignore[misc]
                    return
                elif (msg.headers or {}).get("Status") == _NO_RESPONDERS:
                    if control is None and reasks:
                        await asyncio.sleep(reasks.pop(0))
                        await nc.publish(subject, payload, reply=inbox, headers=headers)
                        continue
                    finished = True
                    raise RpcError(503, f"no service answers {subject}", code="no_responders")
        except RpcError as exc:
            span.set_status(Status(StatusCode.ERROR, exc.code))
            raise
        finally:
            span.end()
            await sub.unsubscribe()
            if not finished and control is not None and nc.is_connected:
                with contextlib.suppress(Exception):
                    await nc.publish(control, b"", headers=_CANCEL)
                    await nc.flush(timeout=1)

    async def gather(
        self,
        request: RpcRequest[Rep],
        *,
        subject: str | None = None,
        timeout_s: float,
        done: Callable[[list[Rep]], bool] = lambda _: False,
        grace_s: float = 0.02,
    ) -> list[Rep]:
        """Ask every responder of `subject` (handlers registered with `queue=None`); return their replies once
        `done(replies)` holds (plus a short grace for other replicas) or at the timeout; malformed ones are skipped."""
        subject = subject or request.SUBJECT
        nc = self._connection(subject)
        reply_type: type[Rep] = type(request).REPLY  # type: ignore[assignment]
        replies: list[Rep] = []
        finished = asyncio.Event()

        async def collect(msg: Msg) -> None:
            if (msg.headers or {}).get(RPC_HEADER) == Frame.ERROR or (msg.headers or {}).get("Status"):
                return
            try:
                replies.append(reply_type.model_validate_json(msg.data))
            except ValidationError as exc:
                log.warning("ignored a malformed reply on %s: %s", subject, exc)
            if done(replies):
                finished.set()

        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=collect)
        headers: dict[str, str] = {}
        try:
            with self._client_span(subject):
                _inject_sampled(headers)
                await nc.publish(subject, request.model_dump_json().encode(), reply=inbox, headers=headers)
                try:
                    await asyncio.wait_for(finished.wait(), timeout_s)
                    await asyncio.sleep(grace_s)
                except TimeoutError:
                    pass
        finally:
            await sub.unsubscribe()
        return list(replies)


_CREDIT = {RPC_HEADER: Frame.CREDIT.value}
_CANCEL = {RPC_HEADER: Frame.CANCEL.value}


def _error_of(subject: str, data: bytes) -> RpcError:
    """The typed error an error frame carries; a frame that is not an ErrorReply is the responder's fault (502)."""
    try:
        return RpcError.from_body(ErrorReply.model_validate_json(data).error)
    except ValidationError as exc:
        return RpcError(502, f"{subject}: a malformed error reply: {exc}"[:2000], code="upstream_failed")


def _span_attributes(subject: str) -> dict[str, str]:
    return {"messaging.system": "nats", "messaging.destination.name": subject, "rpc.system": "modelfleet"}


def _inject_sampled(headers: dict[str, str]) -> None:
    """The current trace's context into `headers`, only when that trace is sampled: an unsampled one would make the
    other side parse a header and start a span that records nothing (the seam starts no trace of its own)."""
    if trace.get_current_span().get_span_context().trace_flags.sampled:
        _PROPAGATOR.inject(headers)


def _window(headers: dict[str, str] | None) -> int:
    try:
        return max(1, min(int((headers or {}).get(WINDOW_HEADER, DEFAULT_WINDOW)), 65536))
    except ValueError:
        return DEFAULT_WINDOW


def _enqueue(queue: asyncio.Queue[Msg]) -> Callable[[Msg], Awaitable[None]]:
    async def put(msg: Msg) -> None:
        queue.put_nowait(msg)

    return put


async def _next_frame(frames: asyncio.Queue[Msg], subject: str, timeout_s: float, *, started: bool) -> Msg:
    if not frames.empty():
        return frames.get_nowait()
    try:
        async with asyncio.timeout(timeout_s):
            return await frames.get()
    except TimeoutError:
        what = "the next chunk" if started else "an answer"
        raise RpcError(504, f"no {what} on {subject} within {timeout_s:g} s", code="timeout") from None


class _Credit:
    """The responder's side of the window: `take()` one chunk's worth, waiting while the caller has granted none."""

    def __init__(self, window: int, idle_s: float = 60.0):
        self.available = window
        self.cancelled = False
        self.idle_s = idle_s
        self._more = asyncio.Event()

    def grant(self, n: int) -> None:
        self.available += n
        self._more.set()

    async def take(self) -> None:
        while self.available <= 0:
            self._more.clear()
            try:
                async with asyncio.timeout(self.idle_s):
                    await self._more.wait()
            except TimeoutError:
                raise RpcError(408, f"the caller granted no credit for {self.idle_s:g} s", code="timeout") from None
        self.available -= 1

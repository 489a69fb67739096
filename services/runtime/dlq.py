"""Delivery semantics of every JetStream stream consumer, in one place (docs/delivery.md).

A consumed subject is registered with a `Policy`: `retry` (a redelivery can help: a database or a peer away) or
`fold` (the handler folds the message into memory; a redelivery would fail the same way). When a handler raises:

- poison (the bytes are not JSON, or not the contract): `dlq.<subject>` at once, acked;
- `fold`: `dlq.<subject>` at once, acked (the fault is logged and recorded, the consumer goes on);
- `retry`: nak'd with the next delay of the backoff schedule, until the last allowed delivery, which goes to
  `dlq.<subject>` instead of being dropped by JetStream; for a command (`cmd.*`) the requester also gets the
  command's `failed` event naming the reason.

A dead letter names the consumer: its durable name, or `<service>/<consumer>` for an ephemeral one. Its
`event_id` is derived from the stream sequence and the consumer, so a dead letter published twice (the ack after it
was lost) is dropped by JetStream's duplicate window; the same holds for the failed event.
"""

from __future__ import annotations

import base64
import contextlib
import inspect
import json
import logging
import sys
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

from faststream import AckPolicy, BaseMiddleware, ContextRepo
from faststream.nats import ConsumerConfig, DeliverPolicy, JStream, NatsBroker, NatsRouter
from faststream.nats.subscriber.usecases.stream_push_subscriber import PushStreamSubscriber
from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import TypeAdapter, ValidationError

from contracts.dlq import DeadLetter
from contracts.envelope import Envelope
from contracts.subjects import dlq_subject
from services.runtime.bus import publish_event
from services.runtime.metrics import meter
from services.runtime.settings import RuntimeSettings

log = logging.getLogger(__name__)

#: (consumer, subject) -> deliveries handed to a handler, for the whole process: a plain count on the ingest path
#: (an SDK `add` costs microseconds), reported by an observable counter.
_consumed: Counter[tuple[str, str]] = Counter()


def _observe_consumed(options: CallbackOptions) -> Iterable[Observation]:
    return [
        Observation(n, {"messaging.consumer.group.name": consumer, "messaging.destination.name": subject})
        for (consumer, subject), n in dict(_consumed).items()
    ]


_meter = meter("modelfleet.runtime")
_meter.create_observable_counter(
    "modelfleet.messages.consumed",
    callbacks=[_observe_consumed],
    unit="{message}",
    description="Stream deliveries handed to a handler",
)
_failed = _meter.create_counter(
    "modelfleet.messages.failed",
    unit="{message}",
    description="Stream deliveries whose handler raised (nak'd or dead-lettered)",
)
_dead_letters = _meter.create_counter(
    "modelfleet.dead_letters", unit="{message}", description="Messages published to dlq.<subject>, by original subject"
)


def record_dead_letter(subject: str, consumer: str) -> None:
    """Count one dead letter published for `subject` (the gateway's raw subscriptions count theirs here too)."""
    _dead_letters.add(1, {"messaging.destination.name": subject, "messaging.consumer.group.name": consumer})


#: Errors that no redelivery can fix: the bytes or their shape are wrong.
POISON = (ValidationError, json.JSONDecodeError, UnicodeDecodeError)
#: Deliveries JetStream allows past `max_deliver`: the dead-letter publish itself gets these many more tries.
SPARE_DELIVERIES = 3
_NAMESPACE = uuid.UUID("6d1f3c2a-8a4b-4c61-9d0e-0f4c2b7e9a15")

#: Builds the failed event of a command from its request id and the reason it was given up.
FailedEvent = Callable[[uuid.UUID, str], Envelope]


@dataclass(frozen=True)
class Policy:
    """What a consumed subject does when its handler raises."""

    retry: bool
    durable: str | None = None
    #: A command's failed event (None for an event: nobody waits for it).
    failed: FailedEvent | None = None


@dataclass(frozen=True)
class Consumer:
    """What a subscriber passes: `config=c.config, ack_policy=c.ack_policy` (and its own `durable=`)."""

    config: ConsumerConfig
    ack_policy: AckPolicy


@dataclass
class Deliveries:
    """One service's consumers and their policies; `middleware` goes on the router that holds its subscribers."""

    broker: NatsBroker
    service: str
    host_id: str
    max_deliver: int = 10
    backoff_s: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0)
    ack_wait_s: float = 30.0
    policies: dict[str, Policy] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, broker: NatsBroker, service: str, host_id: str, settings: RuntimeSettings) -> Deliveries:
        return cls(
            broker,
            service,
            host_id,
            max_deliver=settings.delivery_max_deliver,
            backoff_s=tuple(settings.delivery_backoff_s),
            ack_wait_s=settings.delivery_ack_wait_s,
        )

    # --- what handlers call when they subscribe -------------------------------------------------------------------

    def retried(
        self,
        subject: str,
        *,
        durable: str | None = None,
        failed: FailedEvent | None = None,
        ack_wait_s: float | None = None,
        manual: bool = False,
    ) -> Consumer:
        """The consumer of a subject whose failures a redelivery can fix (backoff, then the DLQ)."""
        self.policies[subject] = Policy(retry=True, durable=durable, failed=failed)
        return self._consumer(ack_wait_s, None, manual)

    def folded(
        self, subject: str, *, ack_wait_s: float | None = None, opt_start_time: datetime | None = None
    ) -> Consumer:
        """The consumer of a pure fold: a handler fault is dead-lettered at once (no retry can help)."""
        self.policies[subject] = Policy(retry=False)
        return self._consumer(ack_wait_s, opt_start_time, False)

    def _consumer(self, ack_wait_s: float | None, opt_start_time: datetime | None, manual: bool) -> Consumer:
        config = ConsumerConfig(
            max_deliver=self.max_deliver + SPARE_DELIVERIES,
            ack_wait=ack_wait_s or self.ack_wait_s,
            opt_start_time=opt_start_time,
        )
        return Consumer(config, AckPolicy.MANUAL if manual else AckPolicy.NACK_ON_ERROR)

    def delay_after(self, attempts: int) -> float:
        """Seconds before delivery `attempts + 1`; the schedule's last value repeats."""
        if not self.backoff_s:
            return 0.0
        return self.backoff_s[min(max(attempts, 1), len(self.backoff_s)) - 1]

    def span_s(self) -> float:
        """Seconds from the first delivery to the last (handler time excluded)."""
        return sum(self.delay_after(n) for n in range(1, self.max_deliver))

    def delivery(self, msg: Any, request_id: uuid.UUID | None = None) -> CommandDelivery:
        """For a MANUAL-ack consumer that acks from a background job: its nack follows the same rules."""
        return CommandDelivery(self, msg, request_id)

    # --- the failure path -----------------------------------------------------------------------------------------

    def policy(self, subject: str) -> Policy:
        return self.policies.get(subject, Policy(retry=True))

    def consumer_label(self, subject: str) -> str:
        """A metric's consumer: the durable name, or the service for an ephemeral consumer (whose name is random)."""
        return self.policy(subject).durable or self.service

    def labels(self, subject: str) -> dict[str, str]:
        return {"messaging.destination.name": subject, "messaging.consumer.group.name": self.consumer_label(subject)}

    async def failed(self, raw: Any, exc: BaseException | None, *, request_id: uuid.UUID | None = None) -> None:
        """One delivery of `raw` failed with `exc`: nak it with a delay, or dead-letter and ack it. Raises when the
        dead letter cannot be published (the message stays unacked, and is delivered again)."""
        policy = self.policy(raw.subject)
        attempts = num_delivered(raw)
        reason = f"{type(exc).__name__}: {exc}" if exc is not None else "the handler gave up (no reason given)"
        poison = isinstance(exc, POISON)
        _failed.add(1, {**self.labels(raw.subject), "error.type": type(exc).__name__ if exc is not None else "gave_up"})
        if policy.retry and not poison and attempts < self.max_deliver:
            delay = self.delay_after(attempts)
            log.warning(
                "%s: delivery %d of %d failed (%s); again in %gs",
                raw.subject, attempts, self.max_deliver, reason[:300], delay,
            )  # fmt: skip
            if not raw._ackd:
                await raw.nak(delay=delay)
            return
        if policy.retry and not poison:
            reason = f"gave up after {attempts} deliveries: {reason}"
        await self.dead_letter(raw, reason, policy, attempts, request_id=request_id)
        if not raw._ackd:
            await raw.ack()

    async def dead_letter(
        self, raw: Any, reason: str, policy: Policy, attempts: int, *, request_id: uuid.UUID | None = None
    ) -> None:
        consumer = policy.durable or f"{self.service}/{_consumer_name(raw)}"
        key = f"{_stream_seq(raw)}:{consumer}:{raw.subject}"
        letter = DeadLetter(
            event_id=uuid.uuid5(_NAMESPACE, key),
            producer=self.service,
            host=self.host_id,
            correlation_id=request_id or _request_id(raw.data),
            original_subject=raw.subject[:512],
            consumer=consumer[:128],
            reason=reason[:8000],
            raw=_b64(raw.data),
            headers={k: str(v) for k, v in (getattr(raw, "headers", None) or {}).items()},
            delivery_attempts=max(attempts, 1),
        )
        await publish_event(self.broker, letter, dlq_subject(raw.subject))
        record_dead_letter(raw.subject, self.consumer_label(raw.subject))
        log.warning("dead-lettered a message on %s (%s): %s", raw.subject, consumer, reason[:300])
        request_id = request_id or _request_id(raw.data)
        if policy.failed is not None and request_id is not None:
            event = policy.failed(request_id, f"{raw.subject} dead-lettered by {consumer}: {reason}"[:8000])
            await publish_event(self.broker, event.model_copy(update={"event_id": uuid.uuid5(_NAMESPACE, f"f:{key}")}))

    def middleware(self, msg: Any, /, *, context: ContextRepo) -> BaseMiddleware:
        return _DeadLetterMiddleware(msg, context=context, deliveries=self)


class _DeadLetterMiddleware(BaseMiddleware):
    def __init__(self, msg: Any, /, *, context: ContextRepo, deliveries: Deliveries) -> None:
        super().__init__(msg, context=context)
        self.deliveries = deliveries

    async def consume_scope(self, call_next: Callable[[Any], Awaitable[Any]], msg: Any) -> Any:
        raw: Any = self.msg
        attempts = num_delivered(raw)
        subject = str(getattr(raw, "subject", "") or "unknown")
        _consumed[(self.deliveries.consumer_label(subject), subject)] += 1
        if attempts > self.deliveries.max_deliver:  # the last delivery's dead letter could not be published
            policy = self.deliveries.policy(raw.subject)
            reason = f"gave up after {attempts - 1} deliveries (the dead letter is published late)"
            await self.deliveries.dead_letter(raw, reason, policy, attempts)
            if not raw._ackd:
                await raw.ack()
            return None
        return await call_next(msg)

    async def after_processed(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> bool | None:
        if exc_val is None or not isinstance(exc_val, Exception):
            return False
        raw: Any = self.msg
        if not hasattr(raw, "metadata") or not str(getattr(raw, "reply", "") or "").startswith("$JS.ACK"):
            return False  # a core NATS message: nothing to redeliver or dead-letter
        await self.deliveries.failed(raw, exc_val)
        return True  # handled: acked or nak'd here; the ack policy's own ack finds it done


class CommandDelivery:
    """The `Delivery` a background job acks: `nack` takes the exception being handled as the reason, waits by the
    backoff schedule, and on the last delivery dead-letters the command and publishes its failed event instead."""

    def __init__(self, deliveries: Deliveries, msg: Any, request_id: uuid.UUID | None) -> None:
        self.deliveries = deliveries
        self.msg = msg
        self.raw: Any = getattr(msg, "raw_message", msg)
        self.request_id = request_id

    async def ack(self) -> None:
        await self.msg.ack()

    async def in_progress(self) -> None:
        await self.msg.in_progress()

    async def nack(self, delay: float | None = None) -> None:
        exc = sys.exc_info()[1]
        await self.deliveries.failed(self.raw, exc, request_id=self.request_id)


def num_delivered(raw: Any) -> int:
    try:
        return int(raw.metadata.num_delivered)
    except Exception:  # a core (non-JetStream) message has no metadata
        return 1


def _stream_seq(raw: Any) -> str:
    try:
        return f"{raw.metadata.stream}:{raw.metadata.sequence.stream}"
    except Exception:
        return uuid.uuid4().hex


def _consumer_name(raw: Any) -> str:
    try:
        return str(raw.metadata.consumer)
    except Exception:
        return "?"


def _request_id(data: bytes) -> uuid.UUID | None:
    """The `request_id` (else `correlation_id`) a payload names, even one that is not a valid contract."""
    try:
        body = json.loads(data)
    except Exception:
        return None
    if not isinstance(body, dict):
        return None
    for name in ("request_id", "correlation_id"):
        with contextlib.suppress(Exception):
            return uuid.UUID(str(body[name]))
    return None


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


class StreamRouter(NatsRouter):
    """The router a service's stream subscribers go on: it carries the dead-letter middleware and the policies."""

    def __init__(self, deliveries: Deliveries) -> None:
        super().__init__(middlewares=[deliveries.middleware])
        self.deliveries = deliveries

    def fold(
        self,
        subject: str,
        *,
        stream: JStream,
        deliver_policy: DeliverPolicy,
        ack_wait_s: float | None = None,
        opt_start_time: datetime | None = None,
    ) -> PushStreamSubscriber:
        """A subscriber (push, no durable: every replica reads the stream) whose handler is a pure fold."""
        consumer = self.deliveries.folded(subject, ack_wait_s=ack_wait_s, opt_start_time=opt_start_time)
        return self.subscriber(
            subject,
            stream=stream,
            deliver_policy=deliver_policy,
            config=consumer.config,
            ack_policy=consumer.ack_policy,
        )

    def lean_fold(
        self,
        subject: str,
        *,
        stream: JStream,
        deliver_policy: DeliverPolicy,
        ack_wait_s: float | None = None,
        opt_start_time: datetime | None = None,
    ) -> Callable[[Handler], Handler]:
        """`fold` for a high-volume ingest (the router's samples, beats, call reports): each delivery goes straight
        from the NATS client to the contract's `model_validate_json`, the handler and the ack (`LeanFold`), not
        through FastStream's per-message pipeline (DI, middlewares, logging context: ~250 us a message). The
        consumer, its policy, dead letters, the consumed count and the `process` span (when a span processor
        records) stay the same; FastStream still declares, starts and documents the subscriber."""
        sub = self.fold(
            subject, stream=stream, deliver_policy=deliver_policy, ack_wait_s=ack_wait_s, opt_start_time=opt_start_time
        )

        def register(handler: Handler) -> Handler:
            sub(handler)
            sub.consume = LeanFold(self.deliveries, sub, subject, handler).consume  # type: ignore[method-assign,assignment]
            return handler

        return register


#: A lean fold's handler: one argument, annotated with the contract it takes.
Handler = TypeVar("Handler", bound=Callable[[Any], Awaitable[None]])

_PROPAGATOR = TraceContextTextMapPropagator()


class LeanFold:
    """The NATS callback of a lean fold subscriber (`consume`: nats-py takes a coroutine function): validate, fold,
    ack. A fault goes to `Deliveries.failed` (for a fold: dead-lettered and acked at once); should that fail, the
    message is nak'd and JetStream delivers it again, as on the middleware path. A `process` span (the producer's
    trace as parent) is made only when the service's tracer has a span processor: with none, nothing records it."""

    def __init__(self, deliveries: Deliveries, sub: Any, subject: str, handler: Callable[[Any], Any]) -> None:
        hints = inspect.get_annotations(handler, eval_str=True)
        model = next(v for k, v in hints.items() if k != "return")
        self.validate = TypeAdapter(model).validate_json
        self.deliveries = deliveries
        self.sub = sub
        self.subject = subject
        self.handler = handler
        self.is_async = inspect.iscoroutinefunction(handler)
        self.key = (deliveries.consumer_label(subject), subject)
        self.tracer = _telemetry_tracer(deliveries.broker)
        self.span_name = f"{subject} process"

    async def consume(self, raw: Any) -> None:
        if not self.sub.running:
            return
        _consumed[self.key] += 1
        if num_delivered(raw) > self.deliveries.max_deliver:  # the last delivery's dead letter was not published
            reason = f"gave up after {num_delivered(raw) - 1} deliveries (the dead letter is published late)"
            await self._settle(raw, RuntimeError(reason), late=True)
            return
        tracer = self.tracer
        if tracer is None or not _records(tracer):
            await self._run(raw)
            return
        parent = _PROPAGATOR.extract(raw.headers or {})
        attributes = {
            "messaging.system": "nats",
            "messaging.destination.name": self.subject,
            "messaging.operation": "process",
            "messaging.message.body.size": len(raw.data),
        }
        with tracer.start_as_current_span(
            self.span_name, context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes
        ):
            await self._run(raw)

    async def _run(self, raw: Any) -> None:
        try:
            result = self.handler(self.validate(raw.data))
            if self.is_async:
                await result
        except Exception as exc:
            await self._settle(raw, exc)
            return
        await raw.ack()

    async def _settle(self, raw: Any, exc: Exception, *, late: bool = False) -> None:
        try:
            if late:
                policy = self.deliveries.policy(raw.subject)
                await self.deliveries.dead_letter(raw, str(exc), policy, num_delivered(raw))
                if not raw._ackd:
                    await raw.ack()
            else:
                await self.deliveries.failed(raw, exc)
        except Exception as dead:  # the dead letter could not be published: JetStream delivers the message again
            log.warning("%s: delivery not settled (%s); it will be delivered again", raw.subject, dead)
            with contextlib.suppress(Exception):
                if not raw._ackd:
                    await raw.nak()


def _telemetry_tracer(broker: Any) -> Any:
    """The tracer of the broker's telemetry middleware (the service's provider), or None."""
    for middleware in getattr(broker, "middlewares", ()) or ():
        tracer = getattr(middleware, "_tracer", None)
        if tracer is not None:
            return tracer
    return None


def _records(tracer: Any) -> bool:
    """Whether spans of this tracer go anywhere: an SDK tracer with at least one span processor (unknown: yes)."""
    processor = getattr(tracer, "span_processor", None)
    processors = getattr(processor, "_span_processors", None)
    return True if processors is None else bool(processors)


def deliveries_of(streams: NatsRouter) -> Deliveries:
    found = getattr(streams, "deliveries", None)
    if not isinstance(found, Deliveries):
        raise TypeError("stream subscribers go on the StreamRouter build_parts makes (it dead-letters)")
    return found

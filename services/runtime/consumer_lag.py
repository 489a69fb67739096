"""How far behind this process's JetStream consumers are, asked of the server now and then and read by a gauge.

A gauge's callback is synchronous and runs on the metrics reader's thread, so it cannot ask NATS: a background task
(`ConsumerLag.run`, one of the service's tasks) asks each consumer's info every `interval_s` and keeps the counts.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Iterable

from faststream.nats import NatsBroker
from opentelemetry.metrics import CallbackOptions, Observation

from services.runtime.metrics import meter

log = logging.getLogger(__name__)

#: (consumer, subject) -> (messages not yet delivered, delivered and not yet acked)
Counts = dict[tuple[str, str], tuple[int, int]]

_watched: weakref.WeakSet[ConsumerLag] = weakref.WeakSet()


def _observe(index: int) -> Iterable[Observation]:
    for lag in list(_watched):
        for (consumer, subject), counts in lag.counts.items():
            labels = {"messaging.consumer.group.name": consumer, "messaging.destination.name": subject}
            yield Observation(counts[index], labels)


def _pending(options: CallbackOptions) -> Iterable[Observation]:
    return _observe(0)


def _ack_pending(options: CallbackOptions) -> Iterable[Observation]:
    return _observe(1)


_meter = meter("modelfleet.runtime")
_meter.create_observable_gauge(
    "modelfleet.consumer.pending",
    callbacks=[_pending],
    unit="{message}",
    description="Messages of a JetStream consumer's subject not yet delivered to it (refreshed every few seconds)",
)
_meter.create_observable_gauge(
    "modelfleet.consumer.ack_pending",
    callbacks=[_ack_pending],
    unit="{message}",
    description="Messages delivered to a JetStream consumer and not yet acknowledged",
)


async def consumer_counts(broker: NatsBroker, service: str) -> Counts:
    """Each JetStream subscriber's pending counts on `broker`, asked of the server now (keyed by its durable name, or
    `service` for an ephemeral consumer, whose name is random)."""
    counts: Counts = {}
    for sub in broker.subscribers:
        info_of = getattr(getattr(sub, "subscription", None), "consumer_info", None)
        if info_of is None:  # a core NATS subscriber, or one not started yet
            continue
        info = await info_of()
        subject = info.config.filter_subject or str(getattr(sub, "subject", "") or "")
        key = (info.config.durable_name or service, subject)
        before = counts.get(key, (0, 0))
        counts[key] = (before[0] + (info.num_pending or 0), before[1] + (info.num_ack_pending or 0))
    return counts


class ConsumerLag:
    """Every `interval_s`, the pending counts of each JetStream subscriber on `broker` (its durable name, or the
    service for an ephemeral consumer, whose name is random)."""

    def __init__(self, broker: NatsBroker, service: str, interval_s: float = 10.0) -> None:
        self.broker = broker
        self.service = service
        self.interval_s = interval_s
        self.counts: Counts = {}
        _watched.add(self)

    async def refresh(self) -> None:
        self.counts = await consumer_counts(self.broker, self.service)

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # NATS away: keep the last counts, ask again later
                log.debug("consumer lag not refreshed: %s", exc)
            await asyncio.sleep(self.interval_s)

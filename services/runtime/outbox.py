"""Transactional outbox: events written in the same transaction as the state, drained to JetStream.

A crash between commit and publish loses nothing (the row stays until published); a crash between
publish and marking it published re-publishes with the same `Nats-Msg-Id`, which JetStream drops.
Published rows are pruned after `retention_outbox_published_s`, a bounded batch per statement; unpublished rows
are never pruned.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from faststream.nats import NatsBroker
from opentelemetry import propagate, trace
from opentelemetry.metrics import CallbackOptions, Observation
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.envelope import Envelope
from contracts.subjects import stream_for
from services.runtime.db import Database
from services.runtime.metrics import meter
from services.runtime.settings import RuntimeSettings

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)

_outboxes: weakref.WeakSet[Outbox] = weakref.WeakSet()


def _pending(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(o.pending, {"db.namespace": o.database.schema}) for o in list(_outboxes)]


def _lag(options: CallbackOptions) -> Iterable[Observation]:
    now = time.time()
    return [
        Observation(
            max(now - o.oldest_at, 0.0) if o.oldest_at is not None else 0.0, {"db.namespace": o.database.schema}
        )
        for o in list(_outboxes)
    ]


_meter = meter("modelfleet.runtime")
_published = _meter.create_counter(
    "modelfleet.outbox.published", unit="{message}", description="Outbox rows published to JetStream"
)
_meter.create_observable_gauge(
    "modelfleet.outbox.pending", callbacks=[_pending], unit="{message}", description="Outbox rows not yet published"
)
_meter.create_observable_gauge(
    "modelfleet.outbox.lag",
    callbacks=[_lag],
    unit="s",
    description="Age of the oldest unpublished outbox row (0 when none waits)",
)


def outbox_columns() -> list[sa.Column[object]]:
    """The outbox table's columns; a service's first migration creates `<schema>.outbox` with them."""
    return [
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("event_id", UUID(as_uuid=True), nullable=False, unique=True),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("headers", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
    ]


def outbox_table(schema: str) -> sa.Table:
    return sa.Table("outbox", sa.MetaData(schema=schema), *outbox_columns())


@dataclass(frozen=True)
class Pruning:
    """Published rows older than `keep_s` are deleted, at most `batch` per statement, every `interval_s`."""

    keep_s: float
    interval_s: float
    batch: int

    @classmethod
    def from_settings(cls, s: RuntimeSettings) -> Pruning:
        return cls(s.retention_outbox_published_s, s.retention_outbox_prune_interval_s, s.retention_outbox_prune_batch)


class Outbox:
    """Add events inside a transaction; `drain()` publishes them after commit; published rows are pruned.

    Without `pruning`, its settings are read from the environment (the shared MODELFLEET_RETENTION_OUTBOX_* names).
    """

    def __init__(
        self,
        database: Database,
        broker: NatsBroker,
        *,
        poll_s: float = 1.0,
        batch: int = 100,
        pruning: Pruning | None = None,
    ):
        self.table = outbox_table(database.schema)
        self.database = database
        self.broker = broker
        self.poll_s = poll_s
        self.batch = batch
        self.pruning = pruning or Pruning.from_settings(RuntimeSettings())
        self.pruned = 0
        #: Rows not yet published, and the oldest one's creation (epoch s), as last counted (`measure_once`).
        self.pending = 0
        self.oldest_at: float | None = None
        self._wake = asyncio.Event()
        _outboxes.add(self)

    async def add(self, session: AsyncSession, event: Envelope, subject: str | None = None) -> None:
        """Stage `event` in the caller's transaction; call `wake()` after the commit."""
        subject = subject or event.SUBJECT
        if stream_for(subject) is None:
            raise ValueError(f"{subject!r} is not captured by a stream")
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        await session.execute(
            self.table.insert().values(
                event_id=event.event_id, subject=subject, payload=event.model_dump(mode="json"), headers=carrier
            )
        )

    def wake(self) -> None:
        self._wake.set()

    async def drain_once(self) -> int:
        """Publish one batch of pending rows; returns how many were published."""
        t = self.table
        async with self.database.transaction() as session:
            rows = (
                await session.execute(
                    sa.select(t.c.id, t.c.event_id, t.c.subject, t.c.payload, t.c.headers)
                    .where(t.c.published_at.is_(None))
                    .order_by(t.c.id)
                    .limit(self.batch)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for row in rows:
                parent = propagate.extract(row.headers or {})
                with _tracer.start_as_current_span(f"outbox {row.subject}", context=parent):
                    await self.broker.publish(
                        row.payload,
                        row.subject,
                        stream=stream_for(row.subject),
                        headers={"Nats-Msg-Id": str(row.event_id)},
                    )
            if rows:
                await session.execute(
                    t.update().where(t.c.id.in_([r.id for r in rows])).values(published_at=datetime.now(UTC))
                )
        if rows:
            _published.add(len(rows), {"db.namespace": self.database.schema})
        return len(rows)

    async def measure_once(self) -> None:
        """Count the unpublished rows and note the oldest one's age, for the `modelfleet.outbox.*` gauges."""
        t = self.table
        async with self.database.transaction() as session:
            count, oldest = (
                await session.execute(
                    sa.select(sa.func.count(), sa.func.min(t.c.created_at)).where(t.c.published_at.is_(None))
                )
            ).one()
        self.pending = int(count)
        self.oldest_at = oldest.timestamp() if oldest is not None else None

    async def prune_once(self) -> int:
        """Delete one batch of rows published more than `keep_s` ago (oldest first); returns how many."""
        t = self.table
        cutoff = datetime.now(UTC) - timedelta(seconds=self.pruning.keep_s)
        oldest = (
            sa.select(t.c.id)
            .where(t.c.published_at.is_not(None), t.c.published_at < cutoff)
            .order_by(t.c.id)
            .limit(self.pruning.batch)
            .with_for_update(skip_locked=True)
        )
        async with self.database.transaction() as session:
            result = await session.execute(t.delete().where(t.c.id.in_(oldest.scalar_subquery())))
        deleted = int(getattr(result, "rowcount", 0) or 0)
        self.pruned += deleted
        return deleted

    async def prune(self) -> int:
        """Prune batch after batch until a batch comes back short; returns how many rows were deleted."""
        total = 0
        while (n := await self.prune_once()) > 0:
            total += n
            if n < self.pruning.batch:
                break
        return total

    async def run(self) -> None:
        """Drain for the life of the service, and prune every `interval_s`; faults are retried later."""
        await self.database.migrated.wait()
        next_prune = time.monotonic()
        while True:
            # Cleared before draining, so a wake() that lands while a drain runs is not lost until the next poll.
            self._wake.clear()
            try:
                while await self.drain_once() == self.batch:
                    pass
            except Exception as exc:
                log.warning("outbox drain failed, will retry: %s", exc)
            try:
                await self.measure_once()
            except Exception as exc:
                log.debug("outbox not measured: %s", exc)
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + self.pruning.interval_s
                try:
                    if pruned := await self.prune():
                        log.info("outbox: pruned %d published rows", pruned)
                except Exception as exc:
                    log.warning("outbox prune failed, will retry: %s", exc)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_s)
            except TimeoutError:
                pass

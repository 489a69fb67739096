"""Retention: `ensure_streams` puts max age / max bytes (and max msgs per subject on EVENTS) on every stream and
KV bucket of a running NATS server, updating streams and buckets made without limits, and the server enforces
them; the outbox deletes published rows past their retention in bounded batches, never unpublished ones."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import nats
import pytest
import sqlalchemy as sa
from nats.js.api import KeyValueConfig, StreamConfig

from contracts.hardware import HOSTS_BUCKET
from contracts.provisioner import ProvisionProgress
from contracts.subjects import COMMANDS_STREAM, DLQ_STREAM, EVENTS_STREAM
from services.runtime.bus import FLIGHTS_BUCKET, BusState, Retention, build_broker, ensure_streams
from services.runtime.db import Database
from services.runtime.outbox import Outbox, Pruning
from services.runtime.settings import RuntimeSettings
from services.runtime.telemetry import build_tracer_provider
from tests.harness.waiting import eventually

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "provisioner" / "migrations"
DAY = 86400.0


async def test_defaults_then_custom_limits_are_applied_to_existing_streams_and_buckets(nats_url, monkeypatch):
    for name in [n for n in list(os.environ) if n.startswith("MODELFLEET_RETENTION_")]:
        monkeypatch.delenv(name)
    nc = await nats.connect(nats_url)
    broker = build_broker(nats_url, "test", build_tracer_provider("test"), BusState())
    await broker.connect()
    try:
        js = nc.jetstream()
        # An older deployment: streams and the probes' bucket made without any limit.
        await js.add_stream(StreamConfig(name=EVENTS_STREAM, subjects=["evt.>"], duplicate_window=120))
        await js.create_key_value(KeyValueConfig(bucket=HOSTS_BUCKET, history=3))
        assert (await js.stream_info(EVENTS_STREAM)).config.max_age in (None, 0)

        await ensure_streams(broker)  # the defaults, as every service starts
        events, commands, dlq = [(await js.stream_info(n)).config for n in (EVENTS_STREAM, COMMANDS_STREAM, DLQ_STREAM)]
        assert (events.max_age, events.max_bytes, events.max_msgs_per_subject) == (7 * DAY, 1 << 30, 100_000)
        assert (commands.max_age, commands.max_bytes) == (7 * DAY, 256 << 20)
        assert (dlq.max_age, dlq.max_bytes) == (30 * DAY, 1 << 30)
        hosts = (await js.stream_info(f"KV_{HOSTS_BUCKET}")).config
        assert (hosts.max_age, hosts.max_bytes, hosts.max_msgs_per_subject) == (7 * DAY, 64 << 20, 3)  # history kept
        flights = (await js.stream_info(f"KV_{FLIGHTS_BUCKET}")).config
        assert (flights.max_age, flights.max_bytes, flights.max_msgs_per_subject) == (15.0, 16 << 20, 1)

        # An operator tightens the limits: the next start updates the running server, which enforces them.
        monkeypatch.setenv("MODELFLEET_RETENTION_EVENTS_MAX_MSGS_PER_SUBJECT", "3")
        monkeypatch.setenv("MODELFLEET_RETENTION_EVENTS_MAX_BYTES", str(64 << 20))
        monkeypatch.setenv("MODELFLEET_RETENTION_DLQ_MAX_AGE_S", "1")
        monkeypatch.setenv("MODELFLEET_RETENTION_HOSTS_MAX_AGE_S", "3600")
        retention = Retention.from_settings(RuntimeSettings())
        await ensure_streams(broker, retention)
        await ensure_streams(broker, retention)  # idempotent
        events = (await js.stream_info(EVENTS_STREAM)).config
        assert (events.max_age, events.max_bytes, events.max_msgs_per_subject) == (7 * DAY, 64 << 20, 3)
        assert (await js.stream_info(DLQ_STREAM)).config.max_age == 1.0
        assert (await js.stream_info(f"KV_{HOSTS_BUCKET}")).config.max_age == 3600.0

        for i in range(5):
            await js.publish("evt.hardware.gpu.sampled.v1", f"s{i}".encode())
        await js.publish("evt.provisioner.model.pulled.v1", b"rare")
        state = (await js.stream_info(EVENTS_STREAM, subjects_filter=">")).state
        assert state.subjects == {"evt.hardware.gpu.sampled.v1": 3, "evt.provisioner.model.pulled.v1": 1}
        assert (await js.get_last_msg(EVENTS_STREAM, "evt.hardware.gpu.sampled.v1")).data == b"s4"

        await js.publish("dlq.cmd.provisioner.provision.v1", b"dead")
        assert (await js.stream_info(DLQ_STREAM)).state.messages == 1

        async def dlq_expired() -> bool:
            return (await js.stream_info(DLQ_STREAM)).state.messages == 0

        await eventually(dlq_expired, timeout_s=15, what="the DLQ message to age out after max_age 1 s")
    finally:
        await broker.stop()
        await nc.close()


def _event() -> ProvisionProgress:
    return ProvisionProgress(producer="test", request_id=uuid4(), target_host="h", model="m", status="x")


async def test_published_outbox_rows_are_pruned_in_bounded_batches(nats_url, database_url):
    db = Database(database_url, "provisioner", MIGRATIONS)
    await db.migrate()
    broker = build_broker(nats_url, "test", build_tracer_provider("test"), BusState())
    await broker.connect()
    await ensure_streams(broker)
    try:
        outbox = Outbox(db, broker, pruning=Pruning(keep_s=DAY, interval_s=3600, batch=2))
        t = outbox.table
        async with db.transaction() as session:
            for _ in range(6):
                await outbox.add(session, _event())
        assert await outbox.drain_once() == 6
        # Five rows were published two days ago; one is a day-old row that was never published (NATS was away).
        async with db.transaction() as session:
            ids = [r.id for r in (await session.execute(sa.select(t.c.id).order_by(t.c.id))).all()]
            two_days = datetime.now(UTC) - timedelta(days=2)
            await session.execute(t.update().where(t.c.id.in_(ids[:5])).values(published_at=two_days))
            await session.execute(t.update().where(t.c.id == ids[5]).values(published_at=None, created_at=two_days))
            await outbox.add(session, _event())  # a fresh, unpublished row

        assert await outbox.prune_once() == 2  # one bounded batch, oldest first
        async with db.transaction() as session:
            left = [r.id for r in (await session.execute(sa.select(t.c.id).order_by(t.c.id))).all()]
        assert left[:4] == ids[2:6]
        assert await outbox.prune() == 3  # the rest, batch after batch
        async with db.transaction() as session:
            rows = (await session.execute(sa.select(t.c.id, t.c.published_at).order_by(t.c.id))).all()
        assert len(rows) == 2 and rows[0].id == ids[5] and all(r.published_at is None for r in rows)
        assert await outbox.prune() == 0

        # The service's drain loop prunes too: with a retention of 0 s, what it publishes is gone soon after.
        looping = Outbox(db, broker, poll_s=0.05, pruning=Pruning(keep_s=0, interval_s=0.1, batch=100))
        db.migrated.set()
        task = asyncio.create_task(looping.run())
        try:

            async def emptied() -> bool:
                async with db.transaction() as session:
                    return (await session.execute(sa.select(sa.func.count()).select_from(t))).scalar_one() == 0

            await eventually(emptied, timeout_s=15, what="the loop to publish both rows and prune them")
        finally:
            task.cancel()
        assert looping.pruned == 2
        nc = await nats.connect(nats_url)
        try:
            assert (
                await nc.jetstream().stream_info(EVENTS_STREAM)
            ).state.messages == 7  # published first (the re-sent row de-duplicated)
        finally:
            await nc.close()
    finally:
        await broker.stop()
        await db.close()

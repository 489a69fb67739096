"""The outbox: an event committed with the state is published even if the process died before publishing it,
and publishing it twice (a crash after publish, before marking) yields one message in the stream."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest
import sqlalchemy as sa
from faststream.nats import NatsBroker

from contracts.provisioner import ProvisionProgress
from services.runtime.bus import BusState, build_broker, ensure_streams
from services.runtime.db import Database
from services.runtime.outbox import Outbox
from services.runtime.telemetry import build_tracer_provider

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "provisioner" / "migrations"


def _event(n: int) -> ProvisionProgress:
    from uuid import uuid4

    return ProvisionProgress(producer="test", request_id=uuid4(), target_host="h", model=f"m{n}", status="x")


async def _broker(nats_url: str) -> NatsBroker:
    broker = build_broker(nats_url, "test", build_tracer_provider("test"), BusState())
    await broker.connect()
    await ensure_streams(broker)
    return broker


async def test_committed_events_survive_a_crash_and_are_published_once(nats_url, database_url):
    db = Database(database_url, "provisioner", MIGRATIONS)
    await db.migrate()
    events = [_event(i) for i in range(3)]
    # "Process 1" commits state + events, then dies before draining: nothing reached NATS.
    writer = Outbox(db, broker=None)  # type: ignore[arg-type]
    async with db.transaction() as session:
        for e in events:
            await writer.add(session, e)
    # A transaction that fails writes no event at all.
    with pytest.raises(RuntimeError):
        async with db.transaction() as session:
            await writer.add(session, _event(99))
            raise RuntimeError("handler failed after staging its event")

    broker = await _broker(nats_url)
    try:
        # "Process 2" drains; then a crash-replay publishes the same rows again before marking them.
        drainer = Outbox(db, broker)
        assert await drainer.drain_once() == 3
        async with db.transaction() as session:
            await session.execute(sa.update(drainer.table).values(published_at=None))
        assert await drainer.drain_once() == 3
        assert await drainer.drain_once() == 0

        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            info = await js.stream_info("EVENTS")
            assert info.state.messages == 3  # the replay was de-duplicated by Nats-Msg-Id
            sub = await js.subscribe(ProvisionProgress.SUBJECT, ordered_consumer=True)
            got = [ProvisionProgress.model_validate_json((await sub.next_msg(timeout=5)).data) for _ in range(3)]
            assert [g.event_id for g in got] == [e.event_id for e in events]
            assert [m.headers["Nats-Msg-Id"] for m in [await _first(js, e.event_id) for e in events]] == [
                str(e.event_id) for e in events
            ]
        finally:
            await nc.close()
    finally:
        await broker.stop()
        await db.close()


async def _first(js, event_id):
    sub = await js.subscribe(ProvisionProgress.SUBJECT, ordered_consumer=True)
    try:
        while True:
            msg = await sub.next_msg(timeout=5)
            if msg.headers and msg.headers.get("Nats-Msg-Id") == str(event_id):
                return msg
    finally:
        await sub.unsubscribe()


async def test_migrations_are_idempotent_and_safe_to_run_concurrently(database_url):
    dbs = [Database(database_url, "provisioner", MIGRATIONS) for _ in range(3)]
    try:
        await asyncio.gather(*(db.migrate() for db in dbs))
        await dbs[0].migrate()
        async with dbs[0].engine.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT version_num FROM provisioner.alembic_version"))).all()
        assert len(rows) == 1
        assert rows[0][0].startswith("provisioner_")
    finally:
        for db in dbs:
            await db.close()

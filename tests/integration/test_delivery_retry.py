"""Delivery semantics of a real consumer (the provisioner's durable `provisioner` on cmd.provisioner.provision.v1,
with real NATS and real PostgreSQL): a transient fault is retried by the backoff schedule and the command completes
once; a fault that lasts past the last delivery ends in dlq.<subject> (reason, durable name, attempts) and the
requester gets evt.provisioner.failed.v1 naming the reason. The fault is real: the provisioner's `requests` table is
renamed away from under it (what a PostgreSQL outage looks like to the handler), and renamed back."""

from __future__ import annotations

import base64
import json
from typing import Any

import nats
import pytest
from nats.js.client import JetStreamContext

from contracts.provisioner import ProvisionCommand
from contracts.subjects import DLQ_STREAM, EVENTS_STREAM, dlq_subject
from tests.harness.provision_bus import db_rows
from tests.harness.waiting import eventually

pytestmark = pytest.mark.integration


async def _requests_table(database_url: str) -> str:
    rows = await db_rows(
        database_url,
        "SELECT table_schema FROM information_schema.tables WHERE table_name = 'requests' AND table_schema <> 'public'",
    )
    assert len(rows) == 1, rows
    return f'"{rows[0]["table_schema"]}"'


async def _rename(database_url: str, schema: str, old: str, new: str) -> None:
    await db_rows(database_url, f"ALTER TABLE {schema}.{old} RENAME TO {new}")


async def _messages(js: JetStreamContext, stream: str, subject: str) -> list[dict[str, Any]]:
    """Every message on `subject` now in `stream` (an ordered consumer from the start, drained)."""
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True)
    found: list[dict[str, Any]] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except TimeoutError:
                return found
            found.append(json.loads(msg.data))
    finally:
        await sub.unsubscribe()


async def _delivered(js: JetStreamContext) -> int:
    """Deliveries the durable has made so far (each redelivery counts)."""
    info = await js.consumer_info("COMMANDS", "provisioner")
    return int(info.delivered.consumer_seq or 0) if info.delivered else 0


async def test_transient_fault_is_retried_and_completes_once(nats_url, database_url, service_env, start_service):
    env = service_env(
        database_url=database_url,
        MODELFLEET_DELIVERY_MAX_DELIVER="200",
        MODELFLEET_DELIVERY_BACKOFF_S="[0.05, 0.1]",
    )
    provisioner = await start_service("provisioner", env)
    schema = await _requests_table(database_url)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await _rename(database_url, schema, "requests", "requests_away")
        cmd = ProvisionCommand(producer="test", models=["qwen3:8b"])
        await js.publish(cmd.SUBJECT, cmd.model_dump_json().encode(), headers={"Nats-Msg-Id": str(cmd.event_id)})

        # It fails (the table is away) and is delivered again, more than once...
        await eventually(lambda: _ok(_delivered(js), 3), timeout_s=30, what="three deliveries")
        await _rename(database_url, schema, "requests_away", "requests")  # ...until the fault goes away.

        async def completed() -> list[dict[str, Any]]:
            found = await _messages(js, EVENTS_STREAM, "evt.provisioner.request.completed.v1")
            return [e for e in found if e["request_id"] == str(cmd.request_id)]

        done = await eventually(completed, timeout_s=30, what="request.completed")
        info = await js.consumer_info("COMMANDS", "provisioner")
        assert (info.num_ack_pending, info.num_pending) == (0, 0)
        # Exactly once: one completion, one stored request, and nothing dead-lettered.
        assert len(await completed()) == len(done) == 1
        rows = await db_rows(database_url, f"SELECT event_id FROM {schema}.requests")
        assert [str(r["event_id"]) for r in rows] == [str(cmd.event_id)]
        assert await _messages(js, DLQ_STREAM, dlq_subject(cmd.SUBJECT)) == []
        assert provisioner.proc.poll() is None
    finally:
        await nc.close()


async def test_lasting_fault_ends_in_dlq_with_the_failed_event(nats_url, database_url, service_env, start_service):
    max_deliver = 4
    env = service_env(
        database_url=database_url,
        MODELFLEET_DELIVERY_MAX_DELIVER=str(max_deliver),
        MODELFLEET_DELIVERY_BACKOFF_S="[0.05]",
    )
    provisioner = await start_service("provisioner", env)
    schema = await _requests_table(database_url)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await _rename(database_url, schema, "requests", "requests_away")
        cmd = ProvisionCommand(producer="test", models=["qwen3:8b"])
        await js.publish(cmd.SUBJECT, cmd.model_dump_json().encode(), headers={"Nats-Msg-Id": str(cmd.event_id)})

        letters = await eventually(
            lambda: _messages(js, DLQ_STREAM, dlq_subject(cmd.SUBJECT)), timeout_s=30, what="a dead letter"
        )
        assert len(letters) == 1
        letter = letters[0]
        assert letter["original_subject"] == cmd.SUBJECT
        assert letter["consumer"] == "provisioner"  # the durable name
        assert letter["delivery_attempts"] == max_deliver
        assert f"gave up after {max_deliver} deliveries" in letter["reason"]
        assert "requests" in letter["reason"]  # the database's own words: the relation is missing
        assert json.loads(base64.b64decode(letter["raw"]))["event_id"] == str(cmd.event_id)

        async def failed() -> list[dict[str, Any]]:
            found = await _messages(js, EVENTS_STREAM, "evt.provisioner.failed.v1")
            return [e for e in found if e["request_id"] == str(cmd.request_id)]

        events = await eventually(failed, timeout_s=15, what="evt.provisioner.failed.v1")
        assert len(events) == 1
        assert events[0]["error_channel"] == "dead_letter"
        assert events[0]["correlation_id"] == str(cmd.request_id)
        assert "gave up after" in events[0]["reason"] and "requests" in events[0]["reason"]
        # Acked: JetStream holds nothing more for the consumer, and the service stays up.
        info = await js.consumer_info("COMMANDS", "provisioner")
        assert (info.num_ack_pending, info.num_pending) == (0, 0)
        assert provisioner.proc.poll() is None
    finally:
        await nc.close()


async def _ok(count: Any, at_least: int) -> bool:
    return int(await count) >= at_least

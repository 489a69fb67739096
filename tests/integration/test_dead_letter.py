"""A consumed subject fed garbage and a schema-violating payload: both land in DLQ, the consumer goes on."""

from __future__ import annotations

import asyncio
import base64
import json

import nats
import pytest

from contracts.provisioner import ProvisionCommand
from contracts.subjects import DLQ_STREAM, dlq_subject

pytestmark = pytest.mark.integration


async def test_poison_messages_are_dead_lettered_and_service_stays_healthy(
    nats_url, database_url, service_env, start_service
):
    provisioner = await start_service("provisioner", service_env(database_url=database_url))
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        garbage = b"\x00\xffnot json at all"
        wrong_shape = json.dumps({"producer": "test", "roles": "general", "force": "maybe"}).encode()
        await js.publish(ProvisionCommand.SUBJECT, garbage)
        await js.publish(ProvisionCommand.SUBJECT, wrong_shape)
        good = ProvisionCommand(producer="test", models=["qwen3:8b"])
        await js.publish(good.SUBJECT, good.model_dump_json().encode(), headers={"Nats-Msg-Id": str(good.event_id)})

        dlq = await js.subscribe(dlq_subject(ProvisionCommand.SUBJECT), stream=DLQ_STREAM, ordered_consumer=True)
        letters = [json.loads((await dlq.next_msg(timeout=10)).data) for _ in range(2)]
        raws = sorted(base64.b64decode(letter["raw"]) for letter in letters)
        assert raws == sorted([garbage, wrong_shape])
        for letter in letters:
            assert letter["original_subject"] == ProvisionCommand.SUBJECT
            assert letter["consumer"] == "provisioner"
            assert "ValidationError" in letter["reason"]
        shape_letter = next(letter for letter in letters if base64.b64decode(letter["raw"]) == wrong_shape)
        assert "roles" in shape_letter["reason"] and "force" in shape_letter["reason"]

        # The consumer kept going: the good command behind the poison ones was processed...
        events = await js.subscribe("evt.provisioner.>", ordered_consumer=True)
        seen = json.loads((await events.next_msg(timeout=10)).data)
        assert seen["request_id"] == str(good.request_id)
        # ...the poison ones were acked (nothing left pending for the durable)...
        for _ in range(150):  # the good command may still be running; poison ones must not stay pending
            info = await js.consumer_info("COMMANDS", "provisioner")
            if info.num_ack_pending == 0 and info.num_pending == 0:
                break
            await asyncio.sleep(0.1)
        assert (info.num_ack_pending, info.num_pending) == (0, 0)
        # ...and the service still says it is healthy.
        health = json.loads((await nc.request("rpc.provisioner.health.v1", b"", timeout=2)).data)
        assert health["healthy"] is True
        assert provisioner.proc.poll() is None
    finally:
        await nc.close()

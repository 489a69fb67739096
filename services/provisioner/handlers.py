"""Provisioner bus handlers: decode, call the domain, persist, publish."""

from __future__ import annotations

from faststream import AckPolicy
from faststream.nats import NatsRouter, PullSub

from contracts.provisioner import ProvisionCommand, ProvisionProgress
from contracts.subjects import COMMANDS_STREAM
from services.provisioner import domain
from services.provisioner.store import ProvisionerStore, ProvisionRequestRow
from services.runtime.bus import jstream
from services.runtime.outbox import Outbox
from services.runtime.parts import ACK_WAIT_S, MAX_DELIVER
from faststream.nats import ConsumerConfig


def register(streams: NatsRouter, store: ProvisionerStore, outbox: Outbox, host_id: str) -> None:
    @streams.subscriber(
        ProvisionCommand.SUBJECT,
        stream=jstream(COMMANDS_STREAM),
        durable="provisioner",
        pull_sub=PullSub(batch_size=8, timeout=1.0),
        config=ConsumerConfig(max_deliver=MAX_DELIVER, ack_wait=ACK_WAIT_S),
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def on_provision(cmd: ProvisionCommand) -> None:
        """Consumes cmd.provisioner.provision.v1; records it and emits evt.provisioner.progress.v1 (accepted).

        Idempotent on event_id: a redelivered command is recognised by its row and emits nothing twice.
        """
        row = ProvisionRequestRow(
            event_id=cmd.event_id, request_id=cmd.request_id, roles=list(cmd.roles), models=list(cmd.models),
            hosts=list(cmd.hosts), force=cmd.force, requested_by=cmd.requested_by,
        )  # fmt: skip
        async with store.database.transaction() as session:
            if not await store.record_request(session, row):
                return
            await outbox.add(
                session,
                ProvisionProgress(
                    producer="provisioner", host=host_id, correlation_id=cmd.request_id, request_id=cmd.request_id,
                    target_host="*", model="*", status=f"accepted: {domain.describe(cmd)}",
                ),  # fmt: skip
            )
        outbox.wake()

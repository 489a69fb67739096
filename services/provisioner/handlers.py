"""Provisioner bus handlers: each decodes its message, calls one operation, and replies (or acks, for commands)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from faststream.nats import NatsMessage, PullSub

from contracts.provisioner import (
    AuditReply,
    AuditRequest,
    InventoryDeleteReply,
    InventoryDeleteRequest,
    InventoryReply,
    InventoryRequest,
    InventorySyncReply,
    InventorySyncRequest,
    ProvisionCommand,
    ProvisionFailed,
    ProvisionFetch,
    ProvisionResultReply,
    ProvisionResultRequest,
    QuantizationsReply,
    QuantizationsRequest,
    UpdateCheckRequest,
    UpdateCheckSummary,
    UpdateStatusReply,
    UpdateStatusRequest,
)
from contracts.subjects import COMMANDS_STREAM, fill
from services.provisioner.operations import Operations
from services.provisioner.updates import UpdateChecker
from services.runtime.bus import jstream
from services.runtime.dlq import FailedEvent, StreamRouter
from services.runtime.rpc import Rpc

log = logging.getLogger(__name__)

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def gave_up(host_id: str) -> FailedEvent:
    """The failed event a provision command gets when it is dead-lettered (all hosts, all models)."""

    def failed(request_id: uuid.UUID, reason: str) -> ProvisionFailed:
        return ProvisionFailed(
            producer="provisioner", host=host_id, correlation_id=request_id, request_id=request_id,
            target_host="*", model="*", reason=reason, error_channel="dead_letter",
        )  # fmt: skip

    return failed


def register(rpc: Rpc, streams: StreamRouter, ops: Operations, *, ack_wait_s: float) -> None:
    """Request/reply handlers join the queue group `provisioner`, so replicas share the load; an `RpcError` an
    operation raises (a hub or Ollama failure, translated) becomes the typed error reply.

    Commands come on two durable consumers, through the same handler and the same delivery rules: `provisioner`
    (cmd.provisioner.provision.v1, shared by every replica of the fleet) and `provisioner-<host id>`
    (cmd.provisioner.fetch.<host id>.v1, shared only by the replicas on this host: what it fetches lands in this
    host's models directory)."""
    deliveries = streams.deliveries
    failed = gave_up(deliveries.host_id)

    def consume(subject: str, durable: str) -> Callable[[Handler], Handler]:
        consumer = deliveries.retried(subject, durable=durable, failed=failed, ack_wait_s=ack_wait_s, manual=True)
        subscriber = streams.subscriber(
            subject,
            stream=jstream(COMMANDS_STREAM),
            durable=durable,
            pull_sub=PullSub(batch_size=8, timeout=0.2),
            config=consumer.config,
            ack_policy=consumer.ack_policy,
        )

        def add(handler: Handler) -> Handler:
            subscriber(handler)
            return handler

        return add

    @consume(ProvisionCommand.SUBJECT, "provisioner")
    async def on_provision(cmd: ProvisionCommand, msg: NatsMessage) -> None:
        """Consumes cmd.provisioner.provision.v1; emits progress, model.pulled / failed, then request.completed.

        Idempotent on event_id: a redelivery of a finished request is acked and does nothing; one of an unfinished
        request (the process died mid-way) runs it again, resuming partial downloads. A request that fails is
        delivered again by the backoff schedule; after the last delivery it goes to dlq.cmd.provisioner.provision.v1
        and evt.provisioner.failed.v1 (target `*`, error_channel `dead_letter`) tells the requester why.
        """
        await ops.accept(cmd, deliveries.delivery(msg, cmd.request_id))

    host = deliveries.host_id

    @consume(fill(ProvisionFetch.SUBJECT, host=host), f"provisioner-{host}")
    async def on_fetch(cmd: ProvisionFetch, msg: NatsMessage) -> None:
        """Consumes cmd.provisioner.fetch.<this host>.v1 (durable provisioner-<host>, shared by this host's replicas
        only); the same as cmd.provisioner.provision.v1, done here so the files land in this host's models directory.
        Dead letters go to dlq.cmd.provisioner.fetch.<host>.v1, with the same failed event."""
        await ops.accept(cmd, deliveries.delivery(msg, cmd.request_id))

    @rpc.handler(ProvisionResultRequest)
    async def on_result(req: ProvisionResultRequest) -> ProvisionResultReply:
        """Consumes rpc.provisioner.result.v1; replies the stored actions of a request. Read-only."""
        return await ops.result(req)

    @rpc.handler(AuditRequest)
    async def on_audit(req: AuditRequest) -> AuditReply:
        """Consumes rpc.provisioner.audit.v1; replies the audit trail, newest first, filtered. Read-only."""
        return await ops.audit(req)

    @rpc.handler(InventoryRequest)
    async def on_inventory(req: InventoryRequest) -> InventoryReply:
        """Consumes rpc.provisioner.inventory.v1; replies the inventory (of one host, or all). Read-only."""
        return await ops.inventory(req)

    @rpc.handler(InventorySyncRequest)
    async def on_sync(req: InventorySyncRequest) -> InventorySyncReply:
        """Consumes rpc.provisioner.inventory.sync.v1; adopts what hosts already have. Idempotent: adopts once."""
        return await ops.sync(req)

    @rpc.handler(InventoryDeleteRequest)
    async def on_delete(req: InventoryDeleteRequest) -> InventoryDeleteReply:
        """Consumes rpc.provisioner.inventory.delete.v1; deletes from host and/or inventory, audited. Idempotent;
        404 (field `host` or `model`) when there is nothing to delete, 502 when the host's Ollama fails."""
        return await ops.delete(req)

    @rpc.handler(QuantizationsRequest)
    async def on_quantizations(req: QuantizationsRequest) -> QuantizationsReply:
        """Consumes rpc.provisioner.hf.quantizations.v1; lists a repo's GGUF files with size and fit. Read-only;
        404 (field `repo_id` or `revision`) for what the hub does not have, 502 when the hub fails."""
        return await ops.quantizations(req)


def register_updates(rpc: Rpc, checker: UpdateChecker) -> None:
    # Several at once: a request arriving while a check runs joins it instead of queueing behind it.
    @rpc.handler(UpdateCheckRequest, concurrency=8)
    async def on_check(req: UpdateCheckRequest) -> UpdateCheckSummary:
        """Consumes rpc.provisioner.updates.check.v1; runs a check (or joins the running one), emits
        update.available for what it finds (outbox) and replies its summary. Not idempotent: each request checks."""
        log.info("update check requested by %s", req.requested_by or "?")
        return await checker.check_now()

    @rpc.handler(UpdateStatusRequest)
    async def on_status(req: UpdateStatusRequest) -> UpdateStatusReply:
        """Consumes rpc.provisioner.updates.status.v1; replies the last check's summary and the next due time."""
        return await checker.status()

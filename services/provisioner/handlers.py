"""Provisioner bus handlers: decode, call the provisioning / inventory code, persist, publish."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from faststream import AckPolicy
from faststream.nats import ConsumerConfig, NatsBroker, NatsMessage, NatsRouter, PullSub
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

from contracts.provisioner import (
    InventoryDeleteRequest,
    InventoryReply,
    InventoryRequest,
    InventorySyncRequest,
    ProvisionCommand,
    ProvisionCompleted,
    ProvisionProgress,
    ProvisionResultReply,
    ProvisionResultRequest,
    QuantizationsRequest,
    UpdateCheckRequest,
    UpdateCheckSummary,
    UpdateStatusReply,
    UpdateStatusRequest,
)
from contracts.subjects import COMMANDS_STREAM
from services.provisioner import domain
from services.provisioner.inventory_ops import InventoryOps, entry
from services.provisioner.ollama_backend import BackendError
from services.provisioner.progress import Publish
from services.provisioner.provisioning import Provisioner
from services.provisioner.store import ProvisionerStore, ProvisionRequestRow
from services.provisioner.updates import UpdateChecker
from services.runtime.bus import jstream
from services.runtime.outbox import Outbox
from services.runtime.parts import MAX_DELIVER

log = logging.getLogger(__name__)


class Jobs:
    """Provision requests run as tasks so several proceed at once; the message is acked when its job is done."""

    def __init__(self, limit: int):
        self.running: set[asyncio.Task[None]] = set()
        self.limit = asyncio.Semaphore(limit)

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def run(self) -> None:
        """A service task: on shutdown, cancel what is still running (its messages are redelivered)."""
        try:
            await asyncio.Event().wait()
        finally:
            for task in list(self.running):
                task.cancel()


def error(status: int, detail: object) -> dict[str, Any]:
    return {"error": {"status": status, "detail": detail}}


def register(
    streams: NatsRouter,
    broker: NatsBroker,
    *,
    store: ProvisionerStore,
    outbox: Outbox,
    host_id: str,
    provisioner: Provisioner,
    ops: InventoryOps,
    jobs: Jobs,
    ack_wait_s: float,
    publish: Publish,
) -> None:
    @streams.subscriber(
        ProvisionCommand.SUBJECT,
        stream=jstream(COMMANDS_STREAM),
        durable="provisioner",
        pull_sub=PullSub(batch_size=8, timeout=0.2),
        config=ConsumerConfig(max_deliver=MAX_DELIVER, ack_wait=ack_wait_s),
        ack_policy=AckPolicy.MANUAL,
    )
    async def on_provision(cmd: ProvisionCommand, msg: NatsMessage) -> None:
        """Consumes cmd.provisioner.provision.v1; emits progress, model.pulled / failed, then request.completed.

        Idempotent on event_id: a redelivery of a finished request is acked and does nothing; one of an unfinished
        request (the process died mid-way) runs it again, resuming partial downloads.
        """
        row = ProvisionRequestRow(
            event_id=cmd.event_id,
            request_id=cmd.request_id,
            roles=list(cmd.roles),
            models=list(cmd.models),
            hosts=list(cmd.hosts),
            force=cmd.force,
            requested_by=cmd.requested_by,
        )
        async with store.database.transaction() as session:
            fresh = await store.record_request(session, row)
            done = not fresh and (await store.request(session, cmd.event_id)).completed_at is not None  # type: ignore[union-attr]
        if fresh:  # progress is best effort (like every progress event); outcomes go through the outbox
            accepted = ProvisionProgress(
                producer="provisioner", host=host_id, correlation_id=cmd.request_id, request_id=cmd.request_id,
                target_host="*", model="*", status=f"accepted: {domain.describe(cmd)}",
            )  # fmt: skip
            jobs.spawn(publish(accepted))
        if done:
            await msg.ack()
            return
        jobs.spawn(_work(cmd, msg))

    async def _work(cmd: ProvisionCommand, msg: NatsMessage) -> None:
        async with jobs.limit:
            beat = asyncio.create_task(_heartbeat(msg, ack_wait_s / 3))
            try:
                actions = await provisioner.handle(cmd)
                dumped = [a.model_dump(mode="json") for a in actions]
                async with store.database.transaction() as session:
                    await store.complete(session, cmd.event_id, dumped)
                    await outbox.add(
                        session,
                        ProvisionCompleted(
                            producer="provisioner",
                            host=host_id,
                            correlation_id=cmd.request_id,
                            request_id=cmd.request_id,
                            actions=actions,
                        ),
                    )
                outbox.wake()
                await msg.ack()
                log.info(
                    "request %s: %s",
                    cmd.request_id,
                    ", ".join(f"{a.model}@{a.target_host}={a.action}" for a in actions),
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("request %s failed; it will be redelivered", cmd.request_id)
                await msg.nack(delay=2)
            finally:
                beat.cancel()

    @broker.subscriber(ProvisionResultRequest.SUBJECT, queue="provisioner")
    async def on_result(req: ProvisionResultRequest) -> ProvisionResultReply:
        """Consumes rpc.provisioner.result.v1; replies the stored actions of a request. Read-only."""
        row = await store.result_by_request_id(req.request_id)
        return ProvisionResultReply(
            request_id=req.request_id, done=bool(row and row.completed_at), actions=(row.result or []) if row else []
        )

    @broker.subscriber(InventoryRequest.SUBJECT, queue="provisioner")
    async def on_inventory(req: InventoryRequest) -> InventoryReply:
        """Consumes rpc.provisioner.inventory.v1; replies the inventory (of one host, or all). Read-only."""
        return InventoryReply(entries=[entry(r) for r in await store.inventory(req.host)])

    @broker.subscriber(InventorySyncRequest.SUBJECT, queue="provisioner")
    async def on_sync(req: InventorySyncRequest) -> Any:
        """Consumes rpc.provisioner.inventory.sync.v1; adopts what hosts already have. Idempotent: adopts once."""
        return await ops.sync(req)

    @broker.subscriber(InventoryDeleteRequest.SUBJECT, queue="provisioner")
    async def on_delete(req: InventoryDeleteRequest) -> Any:
        """Consumes rpc.provisioner.inventory.delete.v1; deletes from host and/or inventory, audited. Idempotent."""
        try:
            reply = await ops.delete(req)
        except LookupError as exc:
            return error(404, str(exc))
        except BackendError as exc:
            return error(502, str(exc))
        if not (reply.removed_from_host or reply.removed_from_inventory):
            return error(404, f"model {req.model!r} is neither in the inventory nor on host {req.host!r}")
        return reply

    @broker.subscriber(QuantizationsRequest.SUBJECT, queue="provisioner")
    async def on_quantizations(req: QuantizationsRequest) -> Any:
        """Consumes rpc.provisioner.hf.quantizations.v1; lists a repo's GGUF files with size and fit. Read-only."""
        try:
            return await ops.quantizations(req)
        except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
            return error(404, str(exc).splitlines()[0])
        except domain.BadReference as exc:
            return error(422, str(exc))
        except (HfHubHTTPError, OSError) as exc:
            return error(502, f"hub {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def register_updates(broker: NatsBroker, checker: UpdateChecker) -> None:
    # several workers: a request arriving while a check runs joins it instead of queueing behind it
    @broker.subscriber(UpdateCheckRequest.SUBJECT, queue="provisioner", max_workers=8)
    async def on_check(req: UpdateCheckRequest) -> UpdateCheckSummary:
        """Consumes rpc.provisioner.updates.check.v1; runs a check (or joins the running one), emits
        update.available for what it finds (outbox) and replies its summary. Not idempotent: each request checks."""
        log.info("update check requested by %s", req.requested_by or "?")
        return await checker.check_now()

    @broker.subscriber(UpdateStatusRequest.SUBJECT, queue="provisioner")
    async def on_status(req: UpdateStatusRequest) -> UpdateStatusReply:
        """Consumes rpc.provisioner.updates.status.v1; replies the last check's summary and the next due time."""
        return await checker.status()


async def _heartbeat(msg: NatsMessage, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            await msg.in_progress()
        except Exception as exc:
            log.warning("in-progress ack failed: %s", exc)

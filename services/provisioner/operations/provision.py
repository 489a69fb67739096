"""The provisioner's use cases: provision requests (record, run, complete through the outbox) and inventory calls."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any, Protocol

from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from contracts.provisioner import (
    AuditEntry,
    AuditReply,
    AuditRequest,
    InventoryDeleteReply,
    InventoryDeleteRequest,
    InventoryReply,
    InventoryRequest,
    InventorySyncReply,
    InventorySyncRequest,
    ProvisionCommand,
    ProvisionCompleted,
    ProvisionProgress,
    ProvisionResultReply,
    ProvisionResultRequest,
    QuantizationsReply,
    QuantizationsRequest,
)
from contracts.rpc import RpcError
from services.provisioner import domain
from services.provisioner.hub import HubUnreachable
from services.provisioner.ollama_backend import BackendError
from services.provisioner.operations.inventory import InventoryOps, entry
from services.provisioner.progress import Publish
from services.provisioner.provisioning import Provisioner
from services.provisioner.store import AuditRow, ProvisionerStore, ProvisionRequestRow
from services.runtime.outbox import Outbox

log = logging.getLogger(__name__)


class Delivery(Protocol):
    """The JetStream message a provision command came in (FastStream's NatsMessage): acked when its job is done."""

    async def ack(self) -> None: ...

    async def nack(self, delay: float | None = None) -> None: ...

    async def in_progress(self) -> None: ...


class Jobs:
    """Provision requests run as tasks so several proceed at once; the message is acked when its job is done."""

    def __init__(self, limit: int):
        self.running: set[asyncio.Task[None]] = set()
        self.limit = asyncio.Semaphore(limit)
        #: Requests waiting for the limit, and running (read by the metrics' queue gauge).
        self.queued = 0
        self.active = 0

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Wait for one of the `limit` places, then hold it while the body runs."""
        self.queued += 1
        try:
            await self.limit.acquire()
        finally:
            self.queued -= 1
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self.limit.release()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
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


class Operations:
    def __init__(
        self,
        *,
        store: ProvisionerStore,
        outbox: Outbox,
        host_id: str,
        provisioner: Provisioner,
        inventory: InventoryOps,
        jobs: Jobs,
        publish: Publish,
        ack_wait_s: float,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.host_id = host_id
        self.provisioner = provisioner
        self.inventory_ops = inventory
        self.jobs = jobs
        self.publish = publish
        self.ack_wait_s = ack_wait_s

    # --- provision requests: durable work from cmd.provisioner.provision.v1 ---------------------------------------

    async def accept(self, cmd: ProvisionCommand, delivery: Delivery) -> None:
        """Record the request (keyed by event_id) and start its job; a finished request's redelivery is only acked."""
        row = ProvisionRequestRow(
            event_id=cmd.event_id,
            request_id=cmd.request_id,
            roles=list(cmd.roles),
            models=list(cmd.models),
            hosts=list(cmd.hosts),
            force=cmd.force,
            requested_by=cmd.requested_by,
        )
        async with self.store.database.transaction() as session:
            fresh = await self.store.record_request(session, row)
            stored = None if fresh else await self.store.request(session, cmd.event_id)
        if fresh:  # progress is best effort (like every progress event); outcomes go through the outbox
            accepted = ProvisionProgress(
                producer="provisioner", host=self.host_id, correlation_id=cmd.request_id, request_id=cmd.request_id,
                target_host="*", model="*", status=f"accepted: {domain.describe(cmd)}"[:256],  # the contract's bound
            )  # fmt: skip
            self.jobs.spawn(self._announce(accepted))
        if stored is not None and stored.completed_at is not None:
            await delivery.ack()
            return
        self.jobs.spawn(self._work(cmd, delivery, resumed=not fresh))

    async def _announce(self, progress: ProvisionProgress) -> None:
        try:
            await self.publish(progress)
        except Exception as exc:  # best effort: the request runs whether or not anyone heard it was accepted
            log.warning("progress event not published: %s", exc)

    async def _work(self, cmd: ProvisionCommand, delivery: Delivery, *, resumed: bool) -> None:
        # JetStream redelivers after ack_wait: a long pull keeps the message ours by saying it is in progress, and so
        # does a request queued behind the job limit (else a burst of commands is redelivered while it waits, and
        # dead-lettered after max_deliver without ever running).
        beat = asyncio.create_task(_heartbeat(delivery, self.ack_wait_s / 3))
        try:
            async with self.jobs.turn():
                try:
                    actions = await self.provisioner.handle(cmd, resumed=resumed)
                    async with self.store.database.transaction() as session:
                        await self.store.complete(session, cmd.event_id, [a.model_dump(mode="json") for a in actions])
                        await self.outbox.add(
                            session,
                            ProvisionCompleted(
                                producer="provisioner",
                                host=self.host_id,
                                correlation_id=cmd.request_id,
                                request_id=cmd.request_id,
                                actions=actions,
                            ),
                        )
                    self.outbox.wake()
                    await delivery.ack()
                    log.info(
                        "request %s: %s",
                        cmd.request_id,
                        ", ".join(f"{a.model}@{a.target_host}={a.action}" for a in actions),
                    )
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("request %s failed; it will be redelivered", cmd.request_id)
                    await delivery.nack(delay=2)
        finally:
            beat.cancel()

    async def result(self, req: ProvisionResultRequest) -> ProvisionResultReply:
        row = await self.store.result_by_request_id(req.request_id)
        return ProvisionResultReply(
            request_id=req.request_id, done=bool(row and row.completed_at), actions=(row.result or []) if row else []
        )

    async def audit(self, req: AuditRequest) -> AuditReply:
        rows = await self.store.audit_trail(
            request_id=req.request_id, host=req.host, model=req.model, since=req.since, limit=req.limit
        )
        return AuditReply(entries=[audit_entry(r) for r in rows])

    # --- inventory and the hub: request/reply, errors as RpcError ------------------------------------------------

    async def inventory(self, req: InventoryRequest) -> InventoryReply:
        return InventoryReply(entries=[entry(r) for r in await self.store.inventory(req.host)])

    async def sync(self, req: InventorySyncRequest) -> InventorySyncReply:
        return await self.inventory_ops.sync(req)  # a host that fails is listed in the reply's errors, not raised

    async def delete(self, req: InventoryDeleteRequest) -> InventoryDeleteReply:
        try:
            reply = await self.inventory_ops.delete(req)
        except LookupError as exc:  # the host has no probe sample and is not configured
            raise RpcError(404, f"host: {exc}", field="host") from exc
        except BackendError as exc:  # no connection in the connect bound: 503 (the dependency is down), else 502
            status, code = (503, "unavailable") if exc.channel == "connection" else (502, "upstream_failed")
            raise RpcError(status, f"Ollama on {req.host!r}: {exc}", code=code) from exc
        if not (reply.removed_from_host or reply.removed_from_inventory):
            what = f"model {req.model!r} is neither in the inventory nor on host {req.host!r}"
            raise RpcError(404, what, field="model")
        return reply

    async def quantizations(self, req: QuantizationsRequest) -> QuantizationsReply:
        """The repo's GGUF files with their fit; sized from the catalog's architecture figures for the repo when the
        library has them (the estimate `fit` makes), else from the file size."""
        library = await self.provisioner.catalog.model(req.repo_id)
        try:
            return await self.inventory_ops.quantizations(req, library.architecture if library else None)
        except Exception as exc:
            error = hub_error(exc, req.repo_id, req.revision)
            if error is None:
                raise
            raise error from exc


def audit_entry(row: AuditRow) -> AuditEntry:
    """A stored audit row as the contract has it (a detail longer than the contract's bound is cut)."""
    fields = row.model_dump()
    fields["detail"] = (row.detail or "")[:8000] or None
    return AuditEntry.model_validate(fields)


def hub_error(exc: Exception, repo_id: str, revision: str) -> RpcError | None:
    """The typed error of a hub call that failed; None for anything else (the seam answers it as a 500/503)."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    # Both not-found errors are HfHubHTTPErrors: they are told apart before the general case.
    if isinstance(exc, RevisionNotFoundError):
        return RpcError(404, f"revision: {revision!r} is not a revision of {repo_id!r} ({first})", field="revision")
    if isinstance(exc, RepositoryNotFoundError):  # also a gated or private repo the token may not read
        return RpcError(404, f"repo_id: no repository {repo_id!r} on the hub ({first})", field="repo_id")
    if isinstance(exc, HFValidationError):  # huggingface_hub checks the repo id's form before any request
        return RpcError(422, f"repo_id: {first}", field="repo_id")
    if isinstance(exc, domain.BadReference):  # the only reference a listing parses is the revision
        return RpcError(422, f"revision: {exc}", field="revision")
    if isinstance(exc, HubUnreachable):  # no connection in the connect bound (503), no answer in time (504)
        return RpcError(exc.status, str(exc), code="unavailable" if exc.status == 503 else "timeout")
    if isinstance(exc, HfHubHTTPError | OSError):
        return RpcError(502, f"hub {type(exc).__name__}: {first}")
    return None


async def _heartbeat(delivery: Delivery, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            await delivery.in_progress()
        except Exception as exc:
            log.warning("in-progress ack failed: %s", exc)

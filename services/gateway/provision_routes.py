"""Gateway routes of the provisioner: provision (202 + SSE progress, or wait for the actions), inventory, HF import."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import BaseModel, Field, StrictBool, StringConstraints, ValidationError

from contracts.catalog import Caller
from contracts.provisioner import (
    AUDIT_LIMIT_MAX,
    AuditReply,
    AuditRequest,
    InventoryDeleteReply,
    InventoryDeleteRequest,
    InventoryReply,
    InventoryRequest,
    InventorySyncReply,
    InventorySyncRequest,
    ProvisionActionResult,
    ProvisionCommand,
    ProvisionCompleted,
    ProvisionFailed,
    ProvisionResultRequest,
    QuantizationsReply,
    QuantizationsRequest,
    pinned_hf_ref,
)
from contracts.rpc import RpcError
from contracts.subjects import COMMANDS_STREAM, EVENTS_STREAM
from services.gateway.auth import admin, caller
from services.gateway.bus_client import BusClient, bus_of
from services.gateway.errors import ERROR_RESPONSES
from services.gateway.subscriptions import dead_letter

router = APIRouter(tags=["provisioning"], responses=ERROR_RESPONSES)
log = logging.getLogger(__name__)

#: The shortest wait a request may ask for (a shorter one could only ever answer "not finished").
MIN_WAIT_S = 1.0
#: How long `GET /api/v1/hf/quantizations` waits for the provisioner (which asks the hub, bounded by its own
#: timeouts and retries): a hub that does not answer is a 504 naming it, not a minute of silence.
HF_ASK_TIMEOUT_S = 30.0
#: A host id or model name given as a query parameter.
HostQuery = Annotated[str | None, Query(min_length=1, max_length=253, description="One host id")]
#: An ISO 8601 instant with a UTC offset (a bare number is not one), each part in its range; a day past its month's
#: end (02-30) is still a 422 naming `since`, from the parse.
ISO_INSTANT = (
    r"^(?:[1-9]\d{3}|0[1-9]\d{2}|00[1-9]\d|000[1-9])-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
    r"[T ](?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d{1,6})?)?(?:Z|[+-](?:[01]\d|2[0-3]):?[0-5]\d)$"
)


#: A role, model reference or host id in a body: never empty, at most what the command's contract takes.
Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]
#: A Hugging Face repo id as the hub accepts it (huggingface_hub's own check): `owner/name`, each part alphanumeric
#: with `-`, `_`, `.` inside, at most 96 characters.
HF_REPO = r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?/[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$"


#: The most roles, models and hosts one request names (each): the provisioner decides one action per (role or model,
#: host), all of them in one `request.completed` event, which must fit a NATS message (1 MiB by default). 512
#: actions of the longest names fit; 256 roles x 1,024 hosts (the command contract's own bounds) kept the provisioner
#: busy for minutes and its event could never be published.
MAX_NAMED = 16


class ProvisionBody(BaseModel):
    roles: list[Name] = Field(
        default_factory=list, max_length=MAX_NAMED, description="Default: every role of the active set."
    )
    models: list[Name] = Field(default_factory=list, max_length=MAX_NAMED, description="Explicit model references.")
    hosts: list[Name] = Field(default_factory=list, max_length=MAX_NAMED, description="Default: every reachable host.")
    force: StrictBool = False
    wait: StrictBool = Field(default=False, description="Answer with the per-role actions instead of 202.")
    allow_unpinned: StrictBool = False
    timeout_s: float = Field(
        default=600.0, ge=MIN_WAIT_S, le=3600,
        description="With wait: how long to wait for the actions; not finished by then: 202 with where to follow it.",
    )  # fmt: skip


class ImportBody(BaseModel):
    repo: str = Field(min_length=3, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
    quant: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_]+$")
    revision: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
    host: str | None = Field(default=None, min_length=1, max_length=253)
    allow_unpinned: StrictBool = False
    force: StrictBool = False
    wait: StrictBool = True
    timeout_s: float = Field(default=3600.0, ge=MIN_WAIT_S, le=86400)


class Accepted(BaseModel):
    request_id: uuid.UUID
    progress_url: str
    result_url: str


class Actions(BaseModel):
    request_id: uuid.UUID
    done: bool
    actions: list[ProvisionActionResult]


async def submit(request: Request, cmd: ProvisionCommand, wait: bool, timeout_s: float) -> JSONResponse:
    """Publish the command; either answer 202 with where to follow it, or wait for its request.completed event."""
    bus = bus_of(request)
    since = (datetime.now(UTC) - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    base = f"/api/v1/models/provision/{cmd.request_id}"
    if not wait:
        await bus.publish(cmd)
        accepted = Accepted(request_id=cmd.request_id, progress_url=f"{base}/events?since={since}", result_url=base)
        return JSONResponse(accepted.model_dump(mode="json"), status_code=202)
    bus.require()
    provisioner_up = await bus.answers("provisioner", request.app.state.settings.health_timeout_s)
    if not provisioner_up:  # waiting would only time out; the durable command would run whenever one starts
        raise HTTPException(503, "no healthy provisioner answers; nothing was submitted")
    nc = bus.broker.connection
    got: asyncio.Future[ProvisionCompleted] = asyncio.get_running_loop().create_future()

    async def on_event(msg: Any) -> None:
        try:
            event = ProvisionCompleted.model_validate_json(msg.data)
        except ValidationError as exc:  # skipped, logged, dead-lettered: the wait goes on
            await dead_letter(bus, msg, exc, "gateway/provision-wait")
            return
        if event.request_id == cmd.request_id and not got.done():
            got.set_result(event)

    async def on_failed(msg: Any) -> None:
        """The provisioner gave up on the whole command (dead-lettered: no request.completed will come)."""
        try:
            event = ProvisionFailed.model_validate_json(msg.data)
        except ValidationError as exc:
            await dead_letter(bus, msg, exc, "gateway/provision-wait")
            return
        if event.request_id == cmd.request_id and event.error_channel == "dead_letter" and not got.done():
            detail = f"the provisioner gave up on request {cmd.request_id}: {event.reason}"
            got.set_exception(RpcError(502, detail, code="dead_lettered"))

    subs = [
        await nc.subscribe(ProvisionCompleted.SUBJECT, cb=on_event),
        await nc.subscribe(ProvisionFailed.SUBJECT, cb=on_failed),
    ]
    try:
        await bus.publish(cmd)
        done = await asyncio.wait_for(got, min(timeout_s, request.app.state.settings.wait_max_s))
    except TimeoutError:  # still running: where to follow it, as without `wait`
        accepted = Accepted(request_id=cmd.request_id, progress_url=f"{base}/events?since={since}", result_url=base)
        return JSONResponse(accepted.model_dump(mode="json"), status_code=202)
    finally:
        for sub in subs:
            await sub.unsubscribe()
    body = Actions(request_id=cmd.request_id, done=True, actions=done.actions)
    return JSONResponse(body.model_dump(mode="json"))


@router.post(
    "/api/v1/models/provision",
    status_code=202,
    response_model=Accepted,
    responses={200: {"model": Actions, "description": "With `wait: true`: the action per role and host"}},
)
async def provision(body: ProvisionBody, request: Request, who: Caller = Depends(admin)) -> JSONResponse:
    """Ensure the roles' (or the given) models are installed on the hosts; publishes cmd.provisioner.provision.v1."""
    try:
        cmd = ProvisionCommand(
            producer="gateway", roles=body.roles, models=body.models, hosts=body.hosts, force=body.force,
            requested_by=who.user_id, allow_unpinned=body.allow_unpinned,
        )  # fmt: skip
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    return await submit(request, cmd, body.wait, body.timeout_s)


@router.get("/api/v1/models/provision/{request_id}", response_model=Actions)
async def provision_result(request_id: uuid.UUID, request: Request, _: Caller = Depends(caller)) -> Actions:
    """The actions of a request once it finished (`done: false` while it runs)."""
    reply = await bus_of(request).ask(ProvisionResultRequest(request_id=request_id))
    return Actions(request_id=request_id, done=reply.done, actions=reply.actions)


@router.get("/api/v1/models/provision/{request_id}/events", response_class=StreamingResponse)
async def provision_events(
    request_id: uuid.UUID, request: Request,
    since: Annotated[str | None, Query(pattern=ISO_INSTANT, max_length=40, examples=["2026-01-01T00:00:00Z"],
                                       description="ISO 8601 instant with offset: events from then on")] = None,
    _: Caller = Depends(caller),
) -> StreamingResponse:  # fmt: skip
    """Server-sent events of one request (progress, model.pulled, failed), ending with `completed`; 404 for a
    request id the fleet has no command, result or event of."""
    try:  # the pattern holds, but the date may not exist (month 98, hour 64)
        start = datetime.fromisoformat(since.replace("Z", "+00:00")) if since else None
    except ValueError as exc:
        error = {"loc": ("query", "since"), "msg": str(exc), "type": "datetime_from_date_parsing"}
        raise RequestValidationError([error]) from exc
    start = start or datetime.now(UTC) - timedelta(minutes=10)
    bus = bus_of(request)
    bus.require()
    if not await request_known(bus, request_id, start):
        raise HTTPException(404, f"request_id: no provisioning request {request_id} (no command since {start})")
    js = bus.broker.connection.jetstream()
    sub = await js.subscribe(
        "evt.provisioner.>", stream=EVENTS_STREAM, ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start),
    )  # fmt: skip

    async def stream() -> AsyncIterator[bytes]:
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=15)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                try:
                    data = json.loads(msg.data)
                    if not isinstance(data, dict):
                        raise ValueError("not a JSON object")
                except ValueError as exc:  # skipped, logged, dead-lettered: the stream goes on
                    await dead_letter(bus, msg, exc, "gateway/provision-events")
                    continue
                if data.get("request_id") != str(request_id):
                    continue
                kind = msg.subject.split(".")[2]
                kind = {"request": "completed", "model": "pulled"}.get(kind, kind)
                yield f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()
                if kind == "completed":
                    return
        finally:
            await sub.unsubscribe()

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def request_known(bus: BusClient, request_id: uuid.UUID, start: datetime) -> bool:
    """Whether the fleet knows this provisioning request: its stored result, or its command in COMMANDS since
    `start` (a command just published has no row yet). Bounded: at most 20 batches of 256 commands are read."""
    reply = await bus.ask(ProvisionResultRequest(request_id=request_id))
    if reply.done or reply.actions:
        return True
    js = bus.broker.connection.jetstream()
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start - timedelta(seconds=5),
        ack_policy=AckPolicy.NONE, inactive_threshold=10.0, max_ack_pending=-1,
    )  # fmt: skip
    sub = await js.pull_subscribe("cmd.provisioner.>", stream=COMMANDS_STREAM, config=config)
    wanted = str(request_id).encode()
    try:
        for _ in range(20):
            try:
                msgs = await sub.fetch(256, timeout=0.5)
            except TimeoutError:
                return False
            if any(wanted in m.data for m in msgs):
                return True
            if msgs and msgs[-1].metadata.num_pending == 0:
                return False
    finally:
        await sub.unsubscribe()
    return False


def parse_since(since: str | None) -> datetime | None:
    """A `since` query parameter (already matching ISO_INSTANT) as an instant; a date that does not exist (02-30)
    is a 422 naming `query.since`."""
    try:
        return datetime.fromisoformat(since.replace("Z", "+00:00")) if since else None
    except ValueError as exc:
        error = {"loc": ("query", "since"), "msg": str(exc), "type": "datetime_from_date_parsing"}
        raise RequestValidationError([error]) from exc


@router.get("/api/v1/provision/audit", response_model=AuditReply)
async def provision_audit(
    request: Request,
    request_id: Annotated[uuid.UUID | None, Query(description="One provision request's rows")] = None,
    host: HostQuery = None,
    model: Annotated[str | None, Query(min_length=1, max_length=256, description="One model reference")] = None,
    since: Annotated[str | None, Query(pattern=ISO_INSTANT, max_length=40, examples=["2026-01-01T00:00:00Z"],
                                       description="ISO 8601 instant with offset: rows from then on")] = None,
    limit: Annotated[int, Query(ge=1, le=AUDIT_LIMIT_MAX, description="At most this many rows")] = 100,
    _: Caller = Depends(admin),
) -> AuditReply:  # fmt: skip
    """The provisioner's audit trail, newest first: who pulled, imported, adopted or deleted which model on which
    host, at which revision and sha256, with what result. Admin only."""
    body = AuditRequest(request_id=request_id, host=host, model=model, since=parse_since(since), limit=limit)
    return await bus_of(request).ask(body)


@router.get("/api/v1/inventory", response_model=InventoryReply)
async def inventory(request: Request, host: HostQuery = None, _: Caller = Depends(caller)) -> InventoryReply:
    """Installed models per host, as the provisioner's inventory records them."""
    return await bus_of(request).ask(InventoryRequest(host=host))


@router.post("/api/v1/inventory/sync", response_model=InventorySyncReply)
async def inventory_sync(request: Request, host: HostQuery = None, who: Caller = Depends(admin)) -> InventorySyncReply:
    """Adopt what hosts already have: Ollama's model list and model files under the models directory."""
    return await bus_of(request).ask(InventorySyncRequest(host=host, requested_by=who.user_id), timeout_s=120.0)


@router.delete("/api/v1/inventory/{host}/{model:path}", response_model=InventoryDeleteReply)
async def inventory_delete(
    host: str, model: str, request: Request, inventory_only: bool = False, who: Caller = Depends(admin)
) -> InventoryDeleteReply:
    """Delete a model from the host and the inventory, or (`inventory_only=true`) forget it only."""
    body = InventoryDeleteRequest(host=host, model=model, inventory_only=inventory_only, requested_by=who.user_id)
    return await bus_of(request).ask(body, timeout_s=60.0)


@router.get("/api/v1/hf/quantizations", response_model=QuantizationsReply)
async def hf_quantizations(
    request: Request, repo: str = Query(min_length=3, max_length=193, pattern=HF_REPO),
    revision: str = Query("main", min_length=1, max_length=128),
    context_tokens: int = Query(4096, ge=0, le=10_000_000), _: Caller = Depends(caller),
) -> QuantizationsReply:  # fmt: skip
    """A repo's GGUF files as quantizations, with size, sha256, estimated VRAM and the fit class per host."""
    try:
        body = QuantizationsRequest(repo_id=repo, revision=revision, context_tokens=context_tokens)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    try:
        return await bus_of(request).ask(body, timeout_s=HF_ASK_TIMEOUT_S)
    except RpcError as exc:
        if exc.code != "timeout":
            raise
        detail = f"the provisioner did not answer in {HF_ASK_TIMEOUT_S:g}s: the Hugging Face hub it asks may be "
        raise RpcError(504, detail + f"unreachable ({exc.detail})", code="timeout", field="repo") from exc


@router.post(
    "/api/v1/models/import",
    status_code=202,
    response_model=Accepted,
    responses={200: {"model": Actions, "description": "With `wait: true` (default): the action per host"}},
)
async def import_model(body: ImportBody, request: Request, who: Caller = Depends(admin)) -> JSONResponse:
    """Pinned, verified import of one GGUF quantization from Hugging Face into Ollama on the host(s)."""
    cmd = ProvisionCommand(
        producer="gateway", models=[pinned_hf_ref(body.repo, body.quant, body.revision)],
        hosts=[body.host] if body.host else [], force=body.force, requested_by=who.user_id,
        allow_unpinned=body.allow_unpinned,
    )  # fmt: skip
    return await submit(request, cmd, body.wait, body.timeout_s)

"""Gateway routes of the provisioner: provision (202 + SSE progress, or wait for the actions), inventory, HF import."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import BaseModel, Field

from contracts.catalog import Caller
from contracts.provisioner import (
    InventoryDeleteReply,
    InventoryDeleteRequest,
    InventoryReply,
    InventoryRequest,
    InventorySyncReply,
    InventorySyncRequest,
    ProvisionActionResult,
    ProvisionCommand,
    ProvisionCompleted,
    ProvisionResultRequest,
    QuantizationsReply,
    QuantizationsRequest,
    pinned_hf_ref,
)
from contracts.subjects import EVENTS_STREAM
from services.gateway.auth import admin, caller
from services.gateway.bus_client import bus_of
from services.gateway.errors import ERROR_RESPONSES

router = APIRouter(tags=["provisioning"], responses=ERROR_RESPONSES)


class ProvisionBody(BaseModel):
    roles: list[str] = Field(default_factory=list, max_length=256, description="Default: every role of the active set.")
    models: list[str] = Field(default_factory=list, max_length=256, description="Explicit model references.")
    hosts: list[str] = Field(default_factory=list, max_length=1024, description="Default: every reachable host.")
    force: bool = False
    wait: bool = Field(default=False, description="Answer with the per-role actions instead of 202.")
    allow_unpinned: bool = False
    timeout_s: float = Field(default=600.0, gt=0, le=3600, description="With wait: how long to wait for the actions.")


class ImportBody(BaseModel):
    repo: str = Field(min_length=3, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
    quant: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_]+$")
    revision: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
    host: str | None = None
    allow_unpinned: bool = False
    force: bool = False
    wait: bool = True
    timeout_s: float = Field(default=3600.0, gt=0, le=86400)


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
        event = ProvisionCompleted.model_validate_json(msg.data)
        if event.request_id == cmd.request_id and not got.done():
            got.set_result(event)

    sub = await nc.subscribe(ProvisionCompleted.SUBJECT, cb=on_event)
    try:
        await bus.publish(cmd)
        done = await asyncio.wait_for(got, timeout_s)
    except TimeoutError as exc:
        raise HTTPException(504, f"request {cmd.request_id} not finished after {timeout_s}s; follow {base}") from exc
    finally:
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
    request_id: uuid.UUID, request: Request, since: datetime | None = Query(None), _: Caller = Depends(caller)
) -> StreamingResponse:
    """Server-sent events of one request (progress, model.pulled, failed), ending with `completed`."""
    bus = bus_of(request)
    bus.require()
    start = since or datetime.now(UTC) - timedelta(minutes=10)
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
                data = json.loads(msg.data)
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


@router.get("/api/v1/inventory", response_model=InventoryReply)
async def inventory(request: Request, host: str | None = None, _: Caller = Depends(caller)) -> InventoryReply:
    """Installed models per host, as the provisioner's inventory records them."""
    return await bus_of(request).ask(InventoryRequest(host=host))


@router.post("/api/v1/inventory/sync", response_model=InventorySyncReply)
async def inventory_sync(request: Request, host: str | None = None, who: Caller = Depends(admin)) -> InventorySyncReply:
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
    request: Request, repo: str = Query(min_length=3, max_length=200), revision: str = "main",
    context_tokens: int = Query(4096, ge=0, le=10_000_000), _: Caller = Depends(caller),
) -> QuantizationsReply:  # fmt: skip
    """A repo's GGUF files as quantizations, with size, sha256, estimated VRAM and the fit class per host."""
    try:
        body = QuantizationsRequest(repo_id=repo, revision=revision, context_tokens=context_tokens)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    return await bus_of(request).ask(body, timeout_s=60.0)


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

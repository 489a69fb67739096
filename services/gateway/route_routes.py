"""Gateway routes of the router: POST /api/v1/route (a decision, no backend called) and GET /api/v1/backends."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from contracts.catalog import Caller
from contracts.router import BackendsReply, BackendsRequest, RouteReply, RouteRequest
from services.gateway.auth import caller
from services.gateway.bus_client import bus_of
from services.gateway.dataplane import DataPlane
from services.gateway.errors import ERROR_RESPONSES

router = APIRouter(tags=["router"], responses=ERROR_RESPONSES)


class RouteBody(BaseModel):
    """Exactly one of role, profile_id, model; `user` defaults to the caller (another user's needs the admin)."""

    role: str | None = Field(default=None, min_length=1, max_length=256, examples=["coding"])
    profile_id: uuid.UUID | None = None
    model: str | None = Field(default=None, min_length=1, max_length=256)
    user: str | None = Field(default=None, min_length=1, max_length=128)
    prompt_tokens: int | None = Field(default=None, ge=0, le=100_000_000)
    required_context: int | None = Field(default=None, ge=1, le=100_000_000)
    options: dict[str, Any] = Field(default_factory=dict)
    performance_profile: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", examples=["code_gen"],
        description="A catalog performance profile to apply (docs/catalog.md#resolution).",
    )  # fmt: skip


@router.post("/api/v1/route", response_model=RouteReply)
async def route(request: Request, body: RouteBody, who: Caller = Depends(caller)) -> RouteReply:
    """The router's decision for this request (backend, model name, options, fallback chain, reason); nothing is
    sent to the backend."""
    user = body.user or who.user_id
    if user != who.user_id and not who.admin:
        raise HTTPException(403, "user: routing as another user needs the admin token")
    ask = RouteRequest(
        role=body.role, profile_id=body.profile_id, model=body.model, user_id=user,
        prompt_tokens=body.prompt_tokens, required_context=body.required_context, options=body.options,
        performance_profile=body.performance_profile,
    )  # fmt: skip
    # an auto_download role's pull is waited for as long as /v1/ waits (MODELFLEET_GATEWAY_PROVISION_WAIT_S), then 503
    plane: DataPlane = request.app.state.plane
    return await plane.decide(ask)


@router.get("/api/v1/backends", response_model=BackendsReply)
async def backends(request: Request, who: Caller = Depends(caller)) -> BackendsReply:
    """Every backend the router knows: state, circuit, in-flight, latency, failures, models; the roles' state."""
    return await bus_of(request).ask(BackendsRequest())

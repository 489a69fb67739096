"""Gateway routes of the provisioner's update check: run one now (admin), and the last one's summary."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from contracts.catalog import Caller
from contracts.provisioner import UpdateCheckRequest, UpdateCheckSummary, UpdateStatusReply, UpdateStatusRequest
from services.gateway.auth import admin, caller
from services.gateway.bus_client import bus_of
from services.gateway.errors import ERROR_RESPONSES

router = APIRouter(tags=["provisioning"], responses=ERROR_RESPONSES)

#: A check asks every installed model's upstream (each bounded by the registry / hub timeouts).
CHECK_TIMEOUT_S = 600.0


@router.post("/api/v1/updates/check", response_model=UpdateCheckSummary)
async def check_updates(request: Request, who: Caller = Depends(admin)) -> UpdateCheckSummary:
    """Run the update check now (or join the one running) and answer its summary; publishes update.available."""
    return await bus_of(request).ask(UpdateCheckRequest(requested_by=who.user_id), timeout_s=CHECK_TIMEOUT_S)


@router.get("/api/v1/updates", response_model=UpdateStatusReply)
async def update_status(request: Request, _: Caller = Depends(caller)) -> UpdateStatusReply:
    """The last update check's summary (updates found, errors, models not checked) and when the next is due."""
    return await bus_of(request).ask(UpdateStatusRequest())

"""Gateway route of the catalog's `local:` models: GET /api/v1/catalog/local-models (docs/catalog.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from contracts.local_models import LocalModelsReply, LocalModelsRequest
from services.gateway.auth import caller
from services.gateway.bus_client import bus_of
from services.gateway.errors import ERROR_RESPONSES

# Read-only, but host paths: any valid token (a user's or the admin's), like /api/v1/hosts.
router = APIRouter(tags=["catalog"], dependencies=[Depends(caller)], responses=ERROR_RESPONSES)


@router.get("/api/v1/catalog/local-models", response_model=LocalModelsReply)
async def local_models(
    request: Request,
    host: Annotated[
        str | None,
        Query(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$", description="Only this host."),
    ] = None,
    ref: Annotated[
        str | None, Query(min_length=7, max_length=512, pattern=r"^local:", examples=["local:tiny.Q4_K_M.gguf"])
    ] = None,
    sha256: Annotated[str | None, Query(pattern=r"^[0-9a-f]{64}$")] = None,
) -> LocalModelsReply:
    """The `.gguf` / `.bin` files the hosts' probes found under MODELFLEET_MODEL_DIRS, as `local:` models of each host
    (size, mtime, sha256 or null while hashing, architecture, quantization, context, shape); every filter given must
    hold. Hosts whose probe has not reported for three report intervals are left out."""
    return await bus_of(request).ask(LocalModelsRequest(host=host, ref=ref, sha256=sha256))

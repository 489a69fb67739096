"""Gateway HTTP handlers for liveness and fleet health."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from contracts.health import SERVICES, HealthReply, HealthRequest
from contracts.rpc import RpcError
from contracts.subjects import fill
from services.gateway import domain
from services.gateway.bus_client import bus_of
from services.runtime.service import package_version

router = APIRouter()


class Liveness(BaseModel):
    status: str
    version: str


class ServiceStatus(BaseModel):
    status: str
    replicas: list[HealthReply]


class FleetHealth(BaseModel):
    status: str
    gateway: Liveness
    nats: str
    services: dict[str, ServiceStatus]
    elapsed_ms: float


@router.get("/healthz", response_model=Liveness, tags=["health"])
async def healthz() -> Liveness:
    """Liveness: the gateway process answers. It asks nobody else."""
    return Liveness(status="ok", version=package_version())


@router.get(
    "/api/v1/health",
    response_model=FleetHealth,
    responses={503: {"model": FleetHealth, "description": "A service is down or silent past the timeout"}},
    tags=["health"],
)
async def fleet_health(request: Request) -> JSONResponse:
    """Asks every service over `rpc.<service>.health.v1`; 503 if any is down or silent past the timeout."""
    bus = bus_of(request)
    timeout_s: float = request.app.state.settings.health_timeout_s
    started = time.perf_counter()
    replies: list[HealthReply] = []
    nats = "up"
    try:
        for_all = [
            bus.gather(
                HealthRequest(), subject=fill(HealthRequest.SUBJECT, service=name),
                timeout_s=timeout_s, done=lambda got: len(got) >= 1,
            )
            for name in SERVICES
        ]  # fmt: skip
        for got in await asyncio.gather(*for_all):
            replies.extend(got)
    except RpcError:  # only raised before anything is sent: NATS is not connected
        nats = "down"
    ok, report = domain.fleet_health(SERVICES, replies)
    body = FleetHealth(
        status="ok" if ok and nats == "up" else "degraded",
        gateway=Liveness(status="ok", version=package_version()),
        nats=nats,
        services={k: ServiceStatus.model_validate(v) for k, v in report.items()},
        elapsed_ms=round((time.perf_counter() - started) * 1000, 2),
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if body.status == "ok" else 503)

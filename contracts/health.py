"""Health request/reply every service answers on `rpc.<service>.health.v1`."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints

from contracts.envelope import Contract, HostId, ServiceName
from contracts.fallback import SlotInfo
from contracts.rpc import RpcRequest

#: Every service of the fleet, by its bus name; `python -m services.<name with _>` runs it.
SERVICES: tuple[str, ...] = ("catalog", "provisioner", "hardware-probe", "router", "inference-fallback")


class DependencyState(StrEnum):
    UP = "up"
    DOWN = "down"
    NOT_USED = "not_used"


class HealthReply(Contract):
    service: ServiceName
    version: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    instance_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    host: HostId
    uptime_s: float = Field(ge=0)
    healthy: bool
    nats: DependencyState
    database: DependencyState
    detail: Annotated[str, StringConstraints(max_length=2000)] = ""
    invalid_requests: int = Field(default=0, ge=0, description="Requests refused as undecodable or invalid (422).")
    # Added with the inference fallback (optional, so the major version holds):
    slots: list[SlotInfo] | None = Field(default=None, description="The fallback's slots; None for other services.")


class HealthRequest(RpcRequest[HealthReply]):
    """Every replica answers (no queue group): the gateway gathers the replies of all of them."""

    SUBJECT = "rpc.{service}.health.v1"

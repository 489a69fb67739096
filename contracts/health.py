"""Health request/reply every service answers on `rpc.<service>.health.v1`."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints

from contracts.envelope import Contract, HostId, ServiceName

#: Every service of the fleet, by its bus name; `python -m services.<name with _>` runs it.
SERVICES: tuple[str, ...] = ("catalog", "provisioner", "hardware-probe", "router", "inference-fallback")


class DependencyState(StrEnum):
    UP = "up"
    DOWN = "down"
    NOT_USED = "not_used"


class HealthRequest(Contract):
    SUBJECT = "rpc.{service}.health.v1"


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

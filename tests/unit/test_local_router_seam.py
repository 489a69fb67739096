"""The data plane's route asks with a router replica in the gateway's process (services.gateway_router): over the
bus until the replica is ready, then to the replica directly, with the same errors and the same bound. The real
replica in a real gateway process is tests/e2e/test_gateway_router.py; here both sides are recorders."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from contracts.router import BackendRef, RouteReply, RouteRequest
from contracts.rpc import RpcError
from services.gateway.call_reports import CallReporter
from services.gateway.dataplane import DataPlane

pytestmark = pytest.mark.unit


def reply(host: str) -> RouteReply:
    backend = BackendRef(host_id=host, kind="openai", base_url=f"http://{host}:8000/v1")
    return RouteReply(model_ref="smollm2", backend=backend, model_name="smollm2", role="coding", options={})


class Bus:
    def __init__(self) -> None:
        self.asked: list[RouteRequest] = []

    async def ask(self, request: RouteRequest, timeout_s: float | None = None) -> RouteReply:
        self.asked.append(request)
        return reply("over-the-bus")


class Replica:
    def __init__(self, delay_s: float = 0.0, refuse_roles: bool = False) -> None:
        self.ready = False
        self.asked: list[RouteRequest] = []
        self.delay_s = delay_s
        self.refuse_roles = refuse_roles

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def route(self, request: RouteRequest) -> RouteReply:
        self.asked.append(request)
        await asyncio.sleep(self.delay_s)
        if self.refuse_roles and request.role:
            raise RpcError(404, f"unknown role {request.role!r}", code="not_found", field="role")
        return reply("in-process")


def plane(bus: Bus, replica: Replica, route_timeout_s: float = 5.0) -> DataPlane:
    async def publish(report: Any) -> None:
        pass

    reporter = CallReporter(publish)  # type: ignore[arg-type]
    return DataPlane(bus, {}, reporter, route_timeout_s=route_timeout_s, local_router=replica)  # type: ignore[arg-type]


async def test_routes_go_over_the_bus_until_the_replica_is_ready_then_never() -> None:
    bus, replica = Bus(), Replica()
    p = plane(bus, replica)
    assert (await p.route("coding", "u1")).backend.host_id == "over-the-bus"  # type: ignore[union-attr]
    assert len(bus.asked) == 1 and replica.asked == []
    replica.ready = True
    for _ in range(3):
        assert (await p.route("coding", "u1", {"temperature": 0}, 12)).backend.host_id == "in-process"  # type: ignore[union-attr]
    assert len(bus.asked) == 1 and len(replica.asked) == 3
    asked = replica.asked[-1]
    assert (asked.role, asked.user_id, asked.options, asked.prompt_tokens) == ("coding", "u1", {"temperature": 0}, 12)


async def test_a_name_the_replica_knows_no_role_of_is_asked_again_as_a_model_name() -> None:
    bus, replica = Bus(), Replica(refuse_roles=True)
    replica.ready = True
    got = await plane(bus, replica).route("smollm2", "u1")
    assert got.backend.host_id == "in-process"  # type: ignore[union-attr]
    assert [(r.role, r.model) for r in replica.asked] == [("smollm2", None), (None, "smollm2")] and bus.asked == []


async def test_a_replica_that_does_not_decide_in_time_is_a_504_like_a_silent_bus() -> None:
    replica = Replica(delay_s=5.0)
    replica.ready = True
    with pytest.raises(RpcError) as late:
        await plane(Bus(), replica, route_timeout_s=0.05).route("coding", "u1")
    assert late.value.status == 504 and late.value.code == "timeout"

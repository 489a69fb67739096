"""Router contracts: route a request to a healthy host; facts about a backend's health."""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

from contracts.envelope import Contract, Envelope
from contracts.rpc import RpcRequest

Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class RouteReply(Contract):
    host_id: Name | None = None
    backend_url: Annotated[str, StringConstraints(max_length=2048)] | None = None
    model_ref: Name
    fallback: bool = False


class RouteRequest(RpcRequest[RouteReply]):
    SUBJECT = "rpc.router.route.v1"

    model: Name
    user_id: Name | None = None


class LlmDegraded(Envelope):
    SUBJECT = "evt.router.llm.degraded.v1"

    host_id: Name
    backend_url: Annotated[str, StringConstraints(max_length=2048)]
    reason: Annotated[str, StringConstraints(min_length=1, max_length=8000)]


class LlmRecovered(Envelope):
    SUBJECT = "evt.router.llm.recovered.v1"

    host_id: Name
    backend_url: Annotated[str, StringConstraints(max_length=2048)]

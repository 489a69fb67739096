"""Router contracts: route a request to a backend, the gateway's per-call outcome report, a role's health facts."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, model_validator

from contracts.catalog import PerformanceProfileName
from contracts.envelope import Contract, Envelope, HostId
from contracts.fallback import SlotInfo
from contracts.rpc import RpcRequest

Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Url = Annotated[str, StringConstraints(max_length=2048)]
Code = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
#: What speaks at a backend's base URL: Ollama's own API, or an OpenAI-compatible `/v1` (llama.cpp, vLLM, ...).
BackendKind = Literal["ollama", "openai"]
#: What a route may send a request to: an HTTP backend, or the inference-fallback service, reached over the bus
#: (`FALLBACK_URL`). Only routes carry `fallback`: probes, checks and call reports are about HTTP backends.
RouteKind = Literal["ollama", "openai", "fallback"]
#: The `base_url` of a `fallback` backend: the subject its generate requests go to.
FALLBACK_URL = "nats:rpc.fallback.generate.v1"
#: How one backend call ended, as the gateway saw it.
CallOutcome = Literal["ok", "error", "connect_refused", "rate_limited", "timeout"]


class BackendRef(Contract):
    """One inference backend: the host it runs on, what it speaks, and where."""

    host_id: HostId
    kind: RouteKind
    base_url: Url = Field(
        description="Ollama: `http://host:11434`; OpenAI-compatible: ends in `/v1`; the fallback: `FALLBACK_URL`."
    )
    # Added with the concurrency limits (optional, so the major version holds):
    max_in_flight: int | None = Field(
        default=None, ge=1, description="Calls this backend takes at once; a gateway never has more open on it."
    )


class RouteCandidate(Contract):
    """A backend and the model name as that backend knows it (the Ollama name on the host, or the OpenAI id)."""

    backend: BackendRef
    model_name: Name
    model_ref: Name | None = Field(default=None, description="The catalog reference this candidate serves.")


class RouteReason(Contract):
    """Why this backend: the tier it came from and the strategy that ordered the tier, plus a sentence."""

    tier: Code = Field(description="`loaded`, `fits` (installed and the estimate fits free memory) or `installed`.")
    strategy: Code = Field(description="`least_busy`, `latency` or `weighted`: what ordered the tier.")
    fail_open: bool = Field(default=False, description="Every host's view was stale: liveness was not checked.")
    detail: Annotated[str, StringConstraints(max_length=2000)] = ""


class RouteReuse(Contract):
    """How long the asking gateway may answer the same request with this reply without asking again (DESIGN §9: a
    gateway may cache a route for a short time; the router's events end it sooner). Offered only for a decision no
    other backend competes in: the model loaded on one usable backend, its circuit closed, the view fresh."""

    ms: int = Field(ge=1, le=60_000, description="Reuse for at most this long after the reply arrives.")
    max_prompt_tokens: int | None = Field(
        default=None, ge=0, description="Only for requests whose prompt estimate is at most this (the num_ctx the "
        "reply was decided at: a larger prompt raises it, and the reply with it).",
    )  # fmt: skip


class RouteReply(Contract):
    """Where to send one request. `host_id`, `backend_url` and `model_ref` repeat `backend` for older readers;
    `fallback` is true when the chosen backend serves a model of the resolved fallback chain, not the model itself."""

    host_id: Name | None = None
    backend_url: Url | None = None
    model_ref: Name
    fallback: bool = False
    backend: BackendRef | None = None
    model_name: Name | None = None
    provider: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    role: Name | None = None
    options: dict[str, Any] = Field(
        default_factory=dict, description="The merged parameters to send; for Ollama `num_ctx` is always set."
    )
    system_prompt: str = ""
    fallback_chain: list[RouteCandidate] = Field(
        default_factory=list, description="The next candidates to try, in order, when this one fails."
    )
    reason: RouteReason | None = None
    fallback_source: Annotated[str, StringConstraints(max_length=4096)] | None = Field(
        default=None, description="What the role's fallback slot loads (`path /m.gguf`, `gguf …`), when one serves it."
    )
    # Added with route reuse (optional, so the major version holds; an older gateway asks every time):
    reuse: RouteReuse | None = Field(
        default=None, description="When set, the asking gateway may reuse this reply for identical requests a while."
    )


class RouteRequest(RpcRequest[RouteReply]):
    """Exactly one of role, profile_id, model; `user_id` selects that user's overrides."""

    SUBJECT = "rpc.router.route.v1"

    role: Name | None = None
    profile_id: uuid.UUID | None = None
    model: Name | None = None
    user_id: Name | None = None
    prompt_tokens: int | None = Field(default=None, ge=0, description="The caller's estimate of the prompt.")
    required_context: int | None = Field(default=None, ge=1, description="Tokens of context the request needs.")
    options: dict[str, Any] = Field(default_factory=dict, description="Request options, highest precedence.")
    # Added with provisioning on demand (optional, so the major version holds):
    provision_wait_s: float | None = Field(
        default=None, ge=0, le=3600, description="How long the caller waits for an auto_download role's model to be "
        "pulled (the router's `provision_wait_s` when None or larger); 0 starts the pull and answers at once.",
    )  # fmt: skip
    # Added with performance profiles (optional, so the major version holds):
    performance_profile: PerformanceProfileName | None = Field(
        default=None, description="A catalog performance profile to apply (docs/catalog.md#resolution); 404 if unknown."
    )

    @model_validator(mode="after")
    def _one_target(self) -> RouteRequest:
        given = [n for n in ("role", "profile_id", "model") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of role, profile_id, model (got {given or 'none'})")
        return self


class BackendCallCompleted(Envelope):
    """A gateway's report of one backend call: what every router replica folds into the backend's passive health.
    Gateways send these batched, as the items of a `BackendCallsCompleted`; one published alone on this subject
    (an older gateway's) is folded the same way.

    `in_flight` is the reporting gateway's own count of calls still open on that backend once this one ended; the
    router keeps the latest count per gateway instance and sums the fresh ones (docs/router.md).
    """

    SUBJECT = "evt.gateway.backend.call.completed.v1"

    host_id: HostId
    backend_url: Url
    kind: BackendKind = "ollama"
    model: Name
    outcome: CallOutcome
    status_code: int | None = Field(default=None, description="The backend's HTTP status, when it answered.")
    latency_ms: float = Field(ge=0, description="From sending the request to the last byte (or the failure).")
    ttft_ms: float | None = Field(default=None, ge=0, description="Time to the first token, for streamed calls.")
    gateway_instance: Name
    in_flight: int | None = Field(default=None, ge=0)


#: The most call reports one `BackendCallsCompleted` carries (a fuller queue goes out as several).
MAX_CALLS_PER_REPORT = 256


class BackendCallsCompleted(Envelope):
    """A gateway's reports of the backend calls that ended within one short window, in the order they ended: one
    message on the bus for many calls (docs/router.md, "Call reports"). Every router replica folds each item as it
    would fold a `BackendCallCompleted` of its own; each item keeps its own `event_id` and `occurred_at`."""

    SUBJECT = "evt.gateway.backend.calls.completed.v1"

    gateway_instance: Name
    calls: list[BackendCallCompleted] = Field(min_length=1, max_length=MAX_CALLS_PER_REPORT)


class BackendBusy(Envelope):
    """A gateway's count of calls open on one backend, sent when the count goes from 0 to 1 and again every few
    seconds while it stays above 0 (a call's end is told by `BackendCallCompleted`). The router folds `in_flight`
    by the same rule as a call report's, and does not count a check timeout against a backend with calls open:
    a backend that serves one request at a time answers no check while it generates (docs/router.md)."""

    SUBJECT = "evt.gateway.backend.busy.v1"

    host_id: HostId
    backend_url: Url
    kind: BackendKind = "ollama"
    gateway_instance: Name
    in_flight: int = Field(ge=0, description="This gateway's calls open on the backend now.")


class LlmDegraded(Envelope):
    SUBJECT = "evt.router.llm.degraded.v1"

    host_id: Name
    backend_url: Annotated[str, StringConstraints(max_length=2048)]
    reason: Annotated[str, StringConstraints(min_length=1, max_length=8000)]
    # Added with the data plane (optional, so the major version holds):
    role: Name | None = None
    hosts: list[Name] = Field(default_factory=list, description="Hosts whose backends the role was left without.")


class LlmRecovered(Envelope):
    SUBJECT = "evt.router.llm.recovered.v1"

    host_id: Name
    backend_url: Annotated[str, StringConstraints(max_length=2048)]
    # Added with the data plane (optional, so the major version holds):
    role: Name | None = None
    hosts: list[Name] = Field(default_factory=list, description="Hosts whose backends serve the role again.")


class BackendChecked(Envelope):
    """A router's active check of one backend (Ollama `GET /api/version`, OpenAI-compatible `GET <base>/models`):
    every router replica folds it into the backend's circuit, as it folds the gateways' call reports."""

    SUBJECT = "evt.router.backend.checked.v1"

    host_id: HostId
    backend_url: Url
    kind: BackendKind = "ollama"
    outcome: CallOutcome
    status_code: int | None = Field(default=None, description="The backend's HTTP status, when it answered.")
    latency_ms: float = Field(ge=0)
    # Added with busy backends (optional, so the major version holds):
    in_flight: int | None = Field(
        default=None, ge=0, description="Calls the gateways had open on the backend during the check, as the checking "
        "router knew them: a timeout with calls open is a busy backend, not a failure.",
    )  # fmt: skip


class BackendState(Contract):
    """One backend as the router's fleet view holds it."""

    host_id: HostId
    kind: BackendKind
    base_url: Url
    healthy: bool = Field(description="A route may choose it now: host alive, reachable, circuit closed.")
    host_alive: bool
    reachable: bool
    circuit: Code = Field(description="`closed`, `open` (cooling down) or `half_open` (a trial call may go).")
    open_until: datetime | None = None
    in_flight: int = 0
    max_in_flight: int | None = Field(default=None, description="Its concurrency limit (at it, routes skip it).")
    latency_ewma_ms: float | None = None
    recent_failures: int = 0
    last_check_at: datetime | None = None
    last_check_outcome: CallOutcome | None = None
    loaded: list[Name] = Field(default_factory=list)
    installed: list[Name] = Field(default_factory=list)


class RoleState(Contract):
    role: Name
    state: Code = Field(description="`healthy`, `degraded` or `unserved` (never had a healthy backend here).")
    hosts: list[Name] = Field(default_factory=list)


class FallbackState(Contract):
    """One live inference-fallback replica, as its last advertisement told."""

    host_id: HostId
    instance_id: Name
    device: Name
    memory_budget_bytes: int = Field(ge=0)
    memory_used_bytes: int = Field(ge=0)
    slots: list[SlotInfo] = Field(default_factory=list)
    sources: dict[str, Annotated[str, StringConstraints(max_length=4096)]] = Field(
        default_factory=dict, description="role -> the source its slot loads"
    )


class BackendsReply(Contract):
    backends: list[BackendState] = Field(default_factory=list)
    fallbacks: list[FallbackState] = Field(default_factory=list, description="Live fallback replicas and slots.")
    stale: bool = Field(default=False, description="Every host's view is stale: routing fails open.")
    roles: list[RoleState] = Field(default_factory=list)


class BackendsRequest(RpcRequest[BackendsReply]):
    """Every backend the router knows, with its health, and the watched roles' state."""

    SUBJECT = "rpc.router.backends.v1"

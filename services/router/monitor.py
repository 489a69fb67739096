"""Active checks of every known backend and the roles' degraded/recovered transitions, as background tasks."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import cast

import httpx
from faststream.nats import NatsBroker

from contracts.catalog import ResolveRequest, RolesRequest
from contracts.envelope import Envelope
from contracts.router import BackendChecked, CallOutcome, LlmDegraded, LlmRecovered
from contracts.rpc import RpcError
from services.router import domain
from services.router.fleet import Backend, Fleet
from services.router.health import RoleStates, check_id, degraded_reason, role_health
from services.router.settings import RouterSettings
from services.runtime.rpc import Rpc

log = logging.getLogger(__name__)


def check_url(b: Backend) -> str:
    return f"{b.base_url}/api/version" if b.kind == "ollama" else f"{b.base_url}/models"


async def check_one(client: httpx.AsyncClient, b: Backend) -> tuple[CallOutcome, int | None, float]:
    """One check: (outcome, HTTP status, ms). A 429 or a refused connection trip the circuit at once."""
    started = time.perf_counter()
    status: int | None = None
    try:
        reply = await client.get(check_url(b))
        status = reply.status_code
        outcome = "ok" if reply.is_success else "rate_limited" if status == 429 else "error"
    except httpx.ConnectError:
        outcome = "connect_refused"
    except httpx.TimeoutException:
        outcome = "timeout"
    except httpx.HTTPError:
        outcome = "error"
    return cast(CallOutcome, outcome), status, (time.perf_counter() - started) * 1000


async def publish(broker: NatsBroker, event: Envelope) -> bool:
    """Publish with `Nats-Msg-Id = event_id`; False when JetStream dropped it as a duplicate. (The PubAck is read
    here because runtime.bus.publish_event drops it, and only the replica whose event was kept logs the line.)"""
    ack = await broker.publish(
        event.model_dump(mode="json"), event.SUBJECT, stream="EVENTS",
        headers={"Nats-Msg-Id": str(event.event_id)}, correlation_id=str(event.event_id),
    )  # fmt: skip
    return not bool(getattr(ack, "duplicate", False))


def open_during(b: Backend, before: int, now: float, ttl_s: float) -> int:
    """Calls the gateways had open on `b` during a check: the most of what they had told at its start (`before`;
    a call that ended meanwhile kept the backend busy) and what they have told by its end (one that started)."""
    return max(before, b.busy(now, ttl_s))


class Checker:
    """Checks every backend of a live host (all of them when the view is stale) once per interval slot. Each
    replica checks; results are published only when they can change a circuit (a failure, or a success on a
    backend with failures or a trip), with an id per (backend, slot), so JetStream keeps one result a slot.
    A result carries the calls the gateways had open during the check, so that every replica folds a busy
    backend's timeout the same way (not as a failure), whatever order the reports reach it in."""

    def __init__(self, fleet: Fleet, broker: NatsBroker, settings: RouterSettings,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.fleet, self.broker, self.settings, self.clock = fleet, broker, settings, clock

    async def run(self) -> None:
        interval = self.settings.check_interval_s
        limit = asyncio.Semaphore(self.settings.check_concurrency)
        # A new connection each check: a kept-alive one can outlive the listener and hide a refusal.
        no_keepalive = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=self.settings.check_timeout_s, limits=no_keepalive) as client:
            while True:
                # aligned to wall-clock slots, so replicas check at the same moments and share slot ids
                await asyncio.sleep(interval - self.clock() % interval)
                await self.round(client, limit)

    async def round(self, client: httpx.AsyncClient, limit: asyncio.Semaphore) -> None:
        now = self.clock()
        slot = math.floor(now / self.settings.check_interval_s)
        stale = self.fleet.stale(now)
        backends = [
            b for h in list(self.fleet.hosts.values()) if stale or h.deadline >= now for b in h.backends.values()
        ]

        ttl = self.fleet.rules.in_flight_ttl_s

        async def one(b: Backend) -> None:
            async with limit:
                before = b.busy(self.clock(), ttl)
                outcome, status, ms = await check_one(client, b)
            if outcome == "ok" and not (b.failures or b.tripped):
                return  # changes nothing anywhere: not worth an event
            event = BackendChecked(
                event_id=check_id(b.id, slot), producer="router", host_id=b.host.host_id, backend_url=b.base_url,
                kind=b.kind, outcome=outcome, status_code=status, latency_ms=round(ms, 3),
                in_flight=open_during(b, before, self.clock(), ttl),
            )  # fmt: skip
            try:
                await publish(self.broker, event)
            except Exception as exc:  # NATS away: the next round tries again
                log.warning("check of %s not published: %s", b.id, exc)

        await asyncio.gather(*(one(b) for b in backends))


class RoleWatch:
    """Evaluates each watched role on the folded view and publishes its transitions: exactly one per transition
    across replicas, because the id follows from the last transition published (health.transition_id)."""

    def __init__(self, fleet: Fleet, rpc: Rpc, broker: NatsBroker, settings: RouterSettings, states: RoleStates,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.fleet, self.rpc, self.broker, self.settings, self.states, self.clock = (
            fleet, rpc, broker, settings, states, clock)  # fmt: skip
        self.roles: dict[str, tuple[str, tuple[domain.Target, ...]]] = {}
        self._refresh_at = 0.0

    def invalidate(self) -> None:
        self._refresh_at = 0.0

    async def refresh(self) -> None:
        """The active profile set's roles, each with its resolved model and fallback chain."""
        timeout = self.settings.resolve_timeout_s
        reply = await self.rpc.ask(RolesRequest(), timeout_s=timeout)
        roles: dict[str, tuple[str, tuple[domain.Target, ...]]] = {}
        for entry in reply.roles:
            try:
                got = await self.rpc.ask(ResolveRequest(role=entry.role), timeout_s=timeout)
            except RpcError as exc:
                log.warning("role %s not watched: %s", entry.role, exc)
                continue
            targets = (
                domain.target(got.model_ref, got.provider),
                *(domain.target(r, None) for r in got.fallback_chain),
            )
            roles[entry.role] = (got.model_ref, targets)
        self.roles = roles

    async def run(self) -> None:
        # A starting replica first folds the replayed samples, checks and past transitions: two check rounds.
        await asyncio.sleep(2 * self.settings.check_interval_s + 0.5)
        while True:
            if self.clock() >= self._refresh_at:
                try:
                    await self.refresh()
                    self._refresh_at = self.clock() + self.settings.roles_refresh_s
                except RpcError as exc:
                    log.warning("watched roles not refreshed (catalog: %s); keeping %d", exc, len(self.roles))
                    self._refresh_at = self.clock() + self.settings.check_interval_s
            await self.evaluate()
            await asyncio.sleep(self.settings.check_interval_s / 4)

    async def evaluate(self) -> None:
        now = self.clock()
        for role, (model_ref, targets) in self.roles.items():
            health = role_health(self.fleet, targets, now)
            before = self.states.published.get(role)
            t = self.states.decide(role, health)
            if t is None:
                continue
            b = t.backend
            host_id, url = (b.host.host_id, b.base_url) if b else ("-", "")
            event: Envelope
            if t.kind == "degraded":
                reason = degraded_reason(role, model_ref, health, now)
                event = LlmDegraded(event_id=t.event_id, producer="router", host_id=host_id, backend_url=url,
                                    reason=reason, role=role, hosts=t.hosts)  # fmt: skip
            else:
                reason = f"role {role!r}: {host_id} {url} answers again"
                event = LlmRecovered(event_id=t.event_id, producer="router", host_id=host_id, backend_url=url,
                                     role=role, hosts=t.hosts)  # fmt: skip
            try:
                kept = await publish(self.broker, event)
            except Exception as exc:  # the next evaluation derives the same id and tries again
                log.warning("llm.%s for %s not published: %s", t.kind, role, exc)
                if before is None:
                    self.states.published.pop(role, None)
                else:
                    self.states.published[role] = before
                continue
            if kept:
                log.warning("llm.%s role=%s hosts=%s event_id=%s reason=%s", t.kind, role, ",".join(t.hosts),
                            t.event_id, reason)  # fmt: skip

"""The router's series (docs/observability.md): backends by circuit state, circuit transitions, watched roles by
state, and route decisions by strategy, tier and outcome.

Gauges read the fleet view when Prometheus scrapes: `watch(fleet, roles)` names the view of this process (the last
one built wins; a process builds one).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry.metrics import CallbackOptions, Observation

from contracts.router import RouteReply
from contracts.rpc import RpcError
from services.router.fleet import Backend, Fleet
from services.runtime.metrics import meter

if TYPE_CHECKING:
    from services.router.monitor import RoleWatch

CIRCUIT_STATES = ("closed", "open", "half_open")
ROLE_STATES = ("healthy", "degraded", "unserved")
DECISION_LABELS = tuple(f"modelfleet.route.{n}" for n in ("strategy", "tier", "outcome", "fail_open"))


@dataclass
class _Watched:
    fleet: Fleet | None = None
    roles: RoleWatch | None = None


_watched = _Watched()


def watch(fleet: Fleet, roles: RoleWatch) -> None:
    """The fleet view and role watch the gauges read (called once by `build_app`)."""
    _watched.fleet, _watched.roles = fleet, roles


def _backends(options: CallbackOptions) -> Iterable[Observation]:
    fleet = _watched.fleet
    if fleet is None:
        return []
    now = time.time()
    stale = fleet.stale(now)
    counts: Counter[tuple[str, str, bool]] = Counter()
    kinds: set[str] = set()
    for host in list(fleet.hosts.values()):
        for b in list(host.backends.values()):
            kinds.add(b.kind)
            counts[(b.kind, b.circuit(now), b.healthy(now, stale))] += 1
    # every (kind, state) seen once stays a series: a state that empties reads 0, not a vanished line
    return [
        Observation(counts[(kind, state, healthy)], _backend_labels(kind, state, healthy))
        for kind in sorted(kinds)
        for state in CIRCUIT_STATES
        for healthy in (True, False)
    ]


def _backend_labels(kind: str, state: str, healthy: bool) -> dict[str, str]:
    return {
        "modelfleet.backend.kind": kind,
        "modelfleet.circuit.state": state,
        "modelfleet.backend.healthy": str(healthy).lower(),
    }


def _roles(options: CallbackOptions) -> Iterable[Observation]:
    roles = _watched.roles
    if roles is None:
        return []
    states = Counter(roles.states.state(role) for role in list(roles.roles))
    return [Observation(states[s], {"modelfleet.role.state": s}) for s in ROLE_STATES]


def _degraded(options: CallbackOptions) -> Iterable[Observation]:
    roles = _watched.roles
    if roles is None:
        return []
    return [
        Observation(1 if roles.states.state(role) == "degraded" else 0, {"modelfleet.role": role})
        for role in sorted(roles.roles)
    ]


#: (strategy, tier, outcome, fail_open) -> route requests answered: a plain count on the hot path (an SDK `add`
#: costs microseconds there), reported by an observable counter.
_decided: Counter[tuple[str, str, str, str]] = Counter()


def _observe_decisions(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(n, dict(zip(DECISION_LABELS, key, strict=True))) for key, n in dict(_decided).items()]


_meter = meter("modelfleet.router")
_meter.create_observable_gauge(
    "modelfleet.router.backends",
    callbacks=[_backends],
    unit="{backend}",
    description="Backends in the fleet view, by kind, circuit state and whether a route may pick them now",
)
_meter.create_observable_gauge(
    "modelfleet.router.roles",
    callbacks=[_roles],
    unit="{role}",
    description="Watched roles (the active profile set's) by state: healthy, degraded, unserved (never seen healthy)",
)
_meter.create_observable_gauge(
    "modelfleet.router.role.degraded",
    callbacks=[_degraded],
    unit="1",
    description="1 while a watched role is degraded (no healthy backend for its model or its chain), else 0",
)
_transitions = _meter.create_counter(
    "modelfleet.router.circuit.transitions",
    unit="{transition}",
    description="Circuit changes folded from call reports and checks (open->half_open happens by time and is not "
    "counted; a half_open trial's outcome is)",
)
_meter.create_observable_counter(
    "modelfleet.router.decisions",
    callbacks=[_observe_decisions],
    unit="{decision}",
    description="Route requests answered, by strategy, tier and outcome",
)


def circuit_changed(b: Backend, before: str, after: str) -> None:
    """The hook `Fleet` calls when a fold moves a backend's circuit."""
    _transitions.add(
        1, {"modelfleet.backend.kind": b.kind, "modelfleet.circuit.from": before, "modelfleet.circuit.to": after}
    )


def decided(reply: RouteReply) -> None:
    """One answered route: its strategy and tier, and how it ended (`routed`, `fallback_model`: a model of the
    role's chain, `fallback_slot`: the fallback service); `fail_open` when the view was stale."""
    reason = reply.reason
    if reply.provider == "fallback" and reason is not None and reason.tier == "fallback":
        outcome = "fallback_slot"
    elif reply.fallback:
        outcome = "fallback_model"
    else:
        outcome = "routed"
    strategy, tier = (reason.strategy, reason.tier) if reason else ("unknown", "unknown")
    _decided[(strategy, tier, outcome, str(bool(reason and reason.fail_open)).lower())] += 1


def refused(strategy: str, exc: RpcError) -> None:
    """A route answered with an error: `busy` (429, every backend at its limit), `no_backend` (503), else its code."""
    outcome = {429: "busy", 503: "no_backend"}.get(exc.status, exc.code)
    _decided[(strategy, "none", outcome, "false")] += 1

"""Role health and its transitions (pure): which backends serve a role now, and when to say degraded or recovered."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from services.router.domain import Target
from services.router.fleet import Backend, Fleet

#: Namespace of transition event ids: every replica derives the same id for the same transition.
TRANSITIONS = uuid.UUID("5b0e8f6e-9a51-4c57-9d8e-1f3b6f1f0a09")
#: Namespace of check event ids: one check result per backend per interval slot survives JetStream's de-duplication.
CHECKS = uuid.UUID("0c7f2d43-3b1e-4a8e-8f0a-6c2d9b7e5a11")


@dataclass(frozen=True, slots=True)
class RoleHealth:
    """The backends that serve the role's model or a model of its chain, and those of them healthy now."""

    candidates: tuple[Backend, ...]
    healthy: tuple[Backend, ...]


def role_health(fleet: Fleet, targets: Iterable[Target], now: float) -> RoleHealth:
    """Loaded or installed copies of the role's models; healthy as a route sees them (fail open when stale)."""
    fail_open = fleet.stale(now)
    seen: dict[str, Backend] = {}
    for t in targets:
        for key in t.keys:
            for index in (fleet.loaded_by, fleet.installed_by):
                seen.update(index.get(key, {}))
    ordered = tuple(seen[k] for k in sorted(seen))
    return RoleHealth(ordered, tuple(b for b in ordered if b.healthy(now, fail_open)))


@dataclass(frozen=True, slots=True)
class Transition:
    role: str
    kind: str  # "degraded" or "recovered"
    event_id: uuid.UUID
    backend: Backend | None
    hosts: list[str]


def transition_id(role: str, kind: str, after: uuid.UUID | None) -> uuid.UUID:
    """The id of a role's next transition follows from the last one published: replicas that decide the same
    transition from the same history publish the same id, and JetStream keeps one."""
    return uuid.uuid5(TRANSITIONS, f"{role}|{kind}|after:{after or 'none'}")


def check_id(backend_id: str, slot: int) -> uuid.UUID:
    return uuid.uuid5(CHECKS, f"{backend_id}|{slot}")


class RoleStates:
    """Each role's last published transition (folded from the stream, or published here) and whether it was seen
    healthy. A role never seen healthy is `unserved`: going without a backend it never had is no transition."""

    def __init__(self) -> None:
        #: role -> (kind of the last transition, its event id)
        self.published: dict[str, tuple[str, uuid.UUID]] = {}
        self.seen_healthy: set[str] = set()

    def fold(self, role: str, kind: str, event_id: uuid.UUID) -> None:
        self.published[role] = (kind, event_id)
        if kind == "recovered":
            self.seen_healthy.add(role)

    def state(self, role: str) -> str:
        last = self.published.get(role)
        if last is not None and last[0] == "degraded":
            return "degraded"
        return "healthy" if role in self.seen_healthy else "unserved"

    def decide(self, role: str, health: RoleHealth) -> Transition | None:
        """The transition `health` calls for, if any (it is folded here at once; the stream confirms it)."""
        state = self.state(role)
        last = self.published.get(role)
        after = last[1] if last else None
        if health.healthy:
            self.seen_healthy.add(role)
            if state != "degraded":
                return None
            got = Transition(role, "recovered", transition_id(role, "recovered", after), health.healthy[0],
                             sorted({b.host.host_id for b in health.healthy}))  # fmt: skip
        else:
            if state != "healthy":
                return None
            # the backend that failed last is the one the role was left without
            last_down = max(
                health.candidates, key=lambda b: (b.failures[-1] if b.failures else 0.0, b.id), default=None
            )
            got = Transition(role, "degraded", transition_id(role, "degraded", after), last_down,
                             sorted({b.host.host_id for b in health.candidates}))  # fmt: skip
        self.fold(role, got.kind, got.event_id)
        return got


def degraded_reason(role: str, model_ref: str, health: RoleHealth, now: float) -> str:
    if not health.candidates:
        return f"role {role!r}: no backend serves {model_ref} nor its fallbacks"
    parts = []
    for b in health.candidates:
        why = b.circuit(now)
        if b.last_check is not None and b.last_check[1] != "ok":
            why += f", last check {b.last_check[1]}"
        if not b.reachable:
            why += ", unreachable"
        if b.host.deadline < now:
            why += ", host silent"
        parts.append(f"{b.id} ({why})")
    return f"role {role!r}: no healthy backend for {model_ref} or its fallbacks: " + "; ".join(parts)

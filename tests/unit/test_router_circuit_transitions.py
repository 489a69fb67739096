"""The router's circuit-transition hook (the `modelfleet.router.circuit.transitions` counter): told once per change a
fold makes, with where the circuit came from; a failure while already open or a success while cooling down is none."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contracts.router import BackendChecked
from services.router.fleet import Backend, Fleet, HealthRules

pytestmark = pytest.mark.unit

T0 = 1_800_000_000.0


def checked(t: float, outcome: str = "ok", status: int | None = None) -> BackendChecked:
    return BackendChecked(
        producer="router", occurred_at=datetime.fromtimestamp(t, UTC), host_id="a",
        backend_url="http://a:11434", outcome=outcome, status_code=status, latency_ms=1.0,
    )  # fmt: skip


def test_each_circuit_change_is_told_once_with_its_origin() -> None:
    fleet = Fleet(HealthRules(allowed_fails=3, cooldown_s=5))
    seen: list[tuple[str, str, str]] = []

    def told(b: Backend, before: str, after: str) -> None:
        seen.append((b.id, before, after))

    fleet.on_circuit = told
    fleet.observe_check(checked(T0 + 1, "connect_refused"))  # trips at once
    fleet.observe_check(checked(T0 + 2, "connect_refused"))  # already open: no change
    fleet.observe_check(checked(T0 + 3))  # a success while cooling down: the cooldown holds
    assert seen == [("a http://a:11434", "closed", "open")]
    fleet.observe_check(checked(T0 + 7, "timeout"))  # the half-open trial fails: open again
    fleet.observe_check(checked(T0 + 13))  # the next trial succeeds
    fleet.observe_check(checked(T0 + 14))  # closed already: nothing to tell
    assert [(before, after) for _, before, after in seen] == [
        ("closed", "open"),
        ("half_open", "open"),
        ("half_open", "closed"),
    ]

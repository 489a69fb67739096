"""Active checks folded into circuits, role health, and degraded/recovered transitions with replica-shared ids."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contracts.router import BackendChecked
from services.router.domain import target
from services.router.fleet import Fleet, HealthRules
from services.router.health import RoleStates, check_id, role_health, transition_id
from tests.harness.router_events import T0, sample

pytestmark = pytest.mark.unit

CODING = (target("qwen3:8b", "ollama"),)


def checked(host: str, t: float, outcome: str = "ok", status: int | None = None) -> BackendChecked:
    return BackendChecked(
        producer="router", occurred_at=datetime.fromtimestamp(t, UTC), host_id=host,
        backend_url=f"http://{host}:11434", outcome=outcome, status_code=status, latency_ms=1.0,
    )  # fmt: skip


def fleet_of(*hosts: str) -> Fleet:
    fleet = Fleet(HealthRules(allowed_fails=3, cooldown_s=5))
    for h in hosts:
        fleet.observe_sample(sample(h, T0, loaded=("qwen3:8b",)))
    return fleet


def test_a_refused_or_429_check_cools_the_backend_down_and_a_later_success_closes_it() -> None:
    for outcome, status in (("connect_refused", None), ("rate_limited", 429)):
        fleet = fleet_of("a")
        fleet.observe_check(checked("a", T0 + 1, outcome, status))
        b = fleet.hosts["a"].backends["http://a:11434"]
        assert b.circuit(T0 + 2) == "open" and not b.healthy(T0 + 2)
        fleet.observe_check(checked("a", T0 + 3))  # a success while cooling down: the cooldown holds
        assert b.circuit(T0 + 4) == "open"
        assert b.circuit(T0 + 6.5) == "half_open" and not b.healthy(T0 + 6.5)  # not healthy until it answers
        fleet.observe_check(checked("a", T0 + 7))
        assert b.circuit(T0 + 7.5) == "closed" and b.healthy(T0 + 7.5) and b.last_check == (T0 + 7, "ok")


def test_timeouts_and_errors_count_until_allowed_fails() -> None:
    fleet = fleet_of("a")
    b = fleet.hosts["a"].backends["http://a:11434"]
    fleet.observe_check(checked("a", T0 + 1, "timeout"))
    fleet.observe_check(checked("a", T0 + 2, "error", 404))  # any non-2xx answer to a check counts
    assert b.circuit(T0 + 2.5) == "closed"
    fleet.observe_check(checked("a", T0 + 3, "error", 500))
    assert b.circuit(T0 + 3.5) == "open"


def test_role_health_counts_closed_circuits_of_the_models_and_chain() -> None:
    fleet = fleet_of("a", "b")
    assert [b.host.host_id for b in role_health(fleet, CODING, T0 + 1).healthy] == ["a", "b"]
    fleet.observe_check(checked("a", T0 + 1, "connect_refused"))
    got = role_health(fleet, CODING, T0 + 2)
    assert [b.host.host_id for b in got.healthy] == ["b"] and len(got.candidates) == 2


def test_one_transition_each_way_and_every_replica_derives_the_same_ids() -> None:
    fleet = fleet_of("a")
    replicas = [RoleStates(), RoleStates()]
    assert [r.decide("coding", role_health(fleet, CODING, T0 + 1)) for r in replicas] == [None, None]  # seen healthy
    fleet.observe_check(checked("a", T0 + 2, "connect_refused"))
    down = [r.decide("coding", role_health(fleet, CODING, T0 + 3)) for r in replicas]
    assert down[0] is not None and down[1] is not None
    assert down[0].kind == "degraded" and down[0].event_id == down[1].event_id == transition_id(
        "coding", "degraded", None
    )
    assert down[0].hosts == ["a"] and down[0].backend is not None and down[0].backend.host.host_id == "a"
    assert all(r.decide("coding", role_health(fleet, CODING, T0 + 4)) is None for r in replicas)  # still down: nothing
    fleet.observe_check(checked("a", T0 + 8))
    up = [r.decide("coding", role_health(fleet, CODING, T0 + 9)) for r in replicas]
    assert up[0] is not None and up[1] is not None and up[0].kind == "recovered"
    assert up[0].event_id == up[1].event_id == transition_id("coding", "recovered", down[0].event_id)
    assert all(r.decide("coding", role_health(fleet, CODING, T0 + 10)) is None for r in replicas)


def test_a_replica_that_folded_the_published_transition_does_not_repeat_it() -> None:
    fleet = fleet_of("a")
    late = RoleStates()
    late.fold("coding", "degraded", transition_id("coding", "degraded", None))  # from the stream, before it evaluates
    fleet.observe_check(checked("a", T0 + 2, "connect_refused"))
    assert late.decide("coding", role_health(fleet, CODING, T0 + 3)) is None
    assert late.state("coding") == "degraded"


def test_a_role_never_served_is_unserved_not_degraded() -> None:
    states = RoleStates()
    assert states.decide("vision", role_health(Fleet(), (target("qwen2.5vl:7b", "ollama"),), T0)) is None
    assert states.state("vision") == "unserved"


def test_check_ids_are_one_per_backend_and_slot() -> None:
    assert check_id("a http://a:11434", 7) == check_id("a http://a:11434", 7) != check_id("a http://a:11434", 8)

"""A busy backend is not a hung one: check timeouts while the gateways have calls open do not trip the circuit;
reachability follows the newest evidence; the gateway tells a backend's first open call and refreshes it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from contracts.envelope import Envelope
from contracts.router import BackendBusy, BackendCallCompleted, BackendCallsCompleted, BackendChecked, BackendRef
from services.gateway.call_reports import CallReporter
from services.router.domain import target
from services.router.fleet import Fleet, HealthRules
from services.router.health import RoleStates, role_health
from services.router.monitor import open_during
from tests.harness.router_events import T0, call, sample
from tests.harness.waiting import eventually

pytestmark = pytest.mark.unit

URL = "http://a:11434"
CODING = (target("qwen3:8b", "ollama"),)


def checked(t: float, outcome: str, *, in_flight: int | None = None, ms: float = 1000.0) -> BackendChecked:
    return BackendChecked(
        producer="router", occurred_at=datetime.fromtimestamp(t, UTC), host_id="a", backend_url=URL,
        outcome=outcome, latency_ms=ms, in_flight=in_flight,
    )  # fmt: skip


def busy(t: float, count: int, gw: str = "gw-1") -> BackendBusy:
    return BackendBusy(producer="gateway", occurred_at=datetime.fromtimestamp(t, UTC), host_id="a", backend_url=URL,
                       gateway_instance=gw, in_flight=count)  # fmt: skip


def fleet_a() -> Fleet:
    fleet = Fleet(HealthRules(allowed_fails=3, cooldown_s=5, in_flight_ttl_s=30))
    fleet.observe_sample(sample("a", T0, loaded=("qwen3:8b",)))
    return fleet


def test_timeouts_of_a_busy_backend_do_not_count_and_are_still_recorded() -> None:
    fleet = fleet_a()
    b = fleet.hosts["a"].backends[URL]
    for i in range(1, 7):  # twice allowed_fails, within the window
        fleet.observe_check(checked(T0 + i, "timeout", in_flight=1))
    assert b.circuit(T0 + 7) == "closed" and b.healthy(T0 + 7) and not b.failures
    assert b.last_check == (T0 + 6, "timeout")


def test_timeouts_of_an_idle_backend_trip_it_as_before() -> None:
    for idle in (0, None):  # nothing open, or a checker that predates the field
        fleet = fleet_a()
        b = fleet.hosts["a"].backends[URL]
        fleet.observe_check(checked(T0 + 1, "timeout", in_flight=idle))
        fleet.observe_check(checked(T0 + 2, "timeout", in_flight=idle))
        assert b.circuit(T0 + 2.5) == "closed"
        fleet.observe_check(checked(T0 + 3, "timeout", in_flight=idle))
        assert b.circuit(T0 + 3.5) == "open" and not b.healthy(T0 + 3.5)


def test_a_refusal_or_an_error_trips_or_counts_however_busy() -> None:
    fleet = fleet_a()
    b = fleet.hosts["a"].backends[URL]
    fleet.observe_check(checked(T0 + 1, "connect_refused", in_flight=4))
    assert b.circuit(T0 + 2) == "open"
    fleet = fleet_a()
    b = fleet.hosts["a"].backends[URL]
    for i in (1, 2, 3):
        fleet.observe_check(checked(T0 + i, "error", in_flight=4).model_copy(update={"status_code": 500}))
    assert b.circuit(T0 + 3.5) == "open"


def test_busy_reports_fold_into_in_flight_by_the_call_report_rule() -> None:
    fleet = fleet_a()
    b = fleet.hosts["a"].backends[URL]
    fleet.observe_busy(busy(T0 + 1, 1))
    fleet.observe_busy(busy(T0 + 1.5, 2, gw="gw-2"))
    assert b.busy(T0 + 2, 30) == 3
    fleet.observe_call(call("a", T0 + 3, in_flight=0))  # gw-1's call ended
    fleet.observe_busy(busy(T0 + 2, 1))  # an older report than the one held changes nothing
    assert b.busy(T0 + 4, 30) == 2
    assert b.busy(T0 + 32, 30) == 0  # gw-2 fell silent: its count expired


def test_the_checker_counts_calls_open_at_either_end_of_the_check() -> None:
    fleet = fleet_a()
    b = fleet.hosts["a"].backends[URL]
    assert open_during(b, 0, T0 + 1, 30) == 0  # nothing told: a timeout is a failure (a hung backend)
    fleet.observe_busy(busy(T0 + 1, 1))
    assert open_during(b, 0, T0 + 2, 30) == 1  # a call started during the check
    fleet.observe_call(call("a", T0 + 3, in_flight=0))
    assert open_during(b, 1, T0 + 3.2, 30) == 1  # the call ended during the check: it was busy when it began
    assert open_during(b, 0, T0 + 4, 30) == 0
    fleet.observe_busy(busy(T0 + 5, 1))
    assert open_during(b, 0, T0 + 40, 30) == 0  # a gateway silent for longer than the TTL (dead) counts nothing


def test_an_unreachable_sample_older_than_a_successful_check_does_not_undo_it() -> None:
    fleet = fleet_a()
    b = fleet.hosts["a"].backends[URL]
    states = RoleStates()
    assert states.decide("coding", role_health(fleet, CODING, T0 + 1)) is None  # seen healthy
    fleet.observe_check(checked(T0 + 2, "connect_refused"))  # the backend stopped
    fleet.observe_sample(sample("a", T0 + 4, loaded=("qwen3:8b",), reachable=False))
    down = states.decide("coding", role_health(fleet, CODING, T0 + 5))
    assert down is not None and down.kind == "degraded" and not b.reachable
    fleet.observe_check(checked(T0 + 8, "ok", ms=3))  # restarted: answers, cooldown over
    assert b.reachable and b.healthy(T0 + 8.5)
    up = states.decide("coding", role_health(fleet, CODING, T0 + 8.5))
    assert up is not None and up.kind == "recovered"
    # a sample taken during the stop arrives now: newer than the last sample, older than the check
    fleet.observe_sample(sample("a", T0 + 7, loaded=("qwen3:8b",), reachable=False))
    assert b.reachable and b.healthy(T0 + 9)
    assert states.decide("coding", role_health(fleet, CODING, T0 + 9)) is None  # no flap
    fleet.observe_sample(sample("a", T0 + 10, loaded=("qwen3:8b",), reachable=False))  # newer: it holds
    assert not b.reachable


def test_a_successful_call_is_evidence_too_and_order_of_arrival_does_not_matter() -> None:
    fleet = fleet_a()
    b = fleet.hosts["a"].backends[URL]
    fleet.observe_call(call("a", T0 + 6))
    fleet.observe_sample(sample("a", T0 + 5, loaded=("qwen3:8b",), reachable=False))
    assert b.reachable
    other = fleet_a()  # the same two events the other way round end in the same state
    other.observe_sample(sample("a", T0 + 5, loaded=("qwen3:8b",), reachable=False))
    other.observe_call(call("a", T0 + 6))
    assert other.hosts["a"].backends[URL].reachable
    fleet.observe_call(call("a", T0 + 7, "timeout"))  # a failure is the circuit's business, not reachability's
    assert b.reachable


def ref(host: str = "a") -> BackendRef:
    return BackendRef(host_id=host, kind="openai", base_url=f"http://{host}:8000/v1")


def reports(sent: list[Envelope]) -> list[Envelope]:
    """What the reporter published, each batch of call reports opened into its calls."""
    return [c for e in sent for c in (e.calls if isinstance(e, BackendCallsCompleted) else [e])]


async def test_the_gateway_tells_the_first_open_call_refreshes_it_and_tells_the_end() -> None:
    sent: list[Envelope] = []

    async def publish(e: Envelope) -> None:
        sent.append(e)

    reporter = CallReporter(publish, instance="gw-1", busy_refresh_s=0.05, busy_after_s=0.02)
    try:
        reporter.started(ref())  # 0 -> 1: told once `busy_after_s` has passed, with the count then
        reporter.started(ref())  # 1 -> 2: no report of its own

        def busy_reports() -> list[BackendBusy]:
            return [e for e in sent if isinstance(e, BackendBusy)]

        async def refreshed() -> bool:
            return len(busy_reports()) >= 3

        await eventually(refreshed, 5, "busy reports refreshed while calls are open")
        first = busy_reports()[0]
        assert (first.host_id, first.backend_url, first.kind, first.gateway_instance, first.in_flight) == (
            "a", "http://a:8000/v1", "openai", "gw-1", 2
        )  # fmt: skip
        assert {e.in_flight for e in busy_reports()} == {2}
        reporter.finished(ref(), "m", "ok", latency_ms=5)
        reporter.finished(ref(), "m", "ok", latency_ms=5)

        async def ended() -> bool:
            done = [e for e in reports(sent) if isinstance(e, BackendCallCompleted)]
            return len(done) == 2 and done[-1].in_flight == 0

        await eventually(ended, 5, "both calls reported")
        await asyncio.sleep(0.2)  # a few refresh periods with nothing open: the refresher stopped, nothing more sent
        count = len(sent)
        await asyncio.sleep(0.2)
        assert len(sent) == count and isinstance(sent[-1], BackendCallsCompleted)

        reporter.started(ref("b"))

        async def told() -> bool:
            return [e.in_flight for e in busy_reports() if e.host_id == "b"] == [1]

        await eventually(told, 5, "the open call told")
        reporter.abandoned(ref("b"))  # the client left: its end is told as a count of 0, with no call report

        async def abandoned() -> bool:
            return [e.in_flight for e in busy_reports() if e.host_id == "b"] == [1, 0]

        await eventually(abandoned, 5, "the abandoned call's end told")
    finally:
        await reporter.aclose()


async def test_a_call_that_ends_before_busy_after_s_costs_its_call_report_alone() -> None:
    sent: list[Envelope] = []

    async def publish(e: Envelope) -> None:
        sent.append(e)

    reporter = CallReporter(publish, instance="gw-1", busy_after_s=0.05)
    try:
        reporter.started(ref("c"))
        reporter.finished(ref("c"), "m", "ok", latency_ms=2)  # a small completion, done within the delay
        reporter.started(ref("d"))
        reporter.abandoned(ref("d"))  # gone before it was told: nothing to take back

        async def reported() -> bool:
            return any(isinstance(e, BackendCallsCompleted) for e in sent)

        await eventually(reported, 5, "the call report sent")
        timer_ran = asyncio.Event()
        asyncio.get_running_loop().call_later(0.1, timer_ran.set)  # past `busy_after_s`: the busy timers have run
        await timer_ran.wait()
        assert [type(e).__name__ for e in reports(sent)] == ["BackendCallCompleted"]
        assert isinstance(sent[0], BackendCallsCompleted) and sent[0].calls[0].in_flight == 0
    finally:
        await reporter.aclose()


async def test_back_to_back_short_calls_are_never_told_busy() -> None:
    """Sequential small completions keep a call open most of the time, but none for `busy_after_s`: no busy report
    (it would also end each report batch early), only their call reports."""
    sent: list[Envelope] = []

    async def publish(e: Envelope) -> None:
        sent.append(e)

    reporter = CallReporter(publish, instance="gw-1", busy_after_s=0.05, batch_window_s=0.01)
    loop = asyncio.get_running_loop()
    try:
        ended = loop.time() + 0.3  # six times `busy_after_s` of calls, one after another, each well within it
        calls = 0
        while loop.time() < ended:
            reporter.started(ref("e"))
            done = asyncio.Event()
            loop.call_later(0.01, done.set)
            await done.wait()
            reporter.finished(ref("e"), "m", "ok", latency_ms=10)
            calls += 1

        async def all_reported() -> bool:
            return len([e for e in reports(sent) if isinstance(e, BackendCallCompleted)]) == calls

        await eventually(all_reported, 5, "every call reported")
        assert not [e for e in sent if isinstance(e, BackendBusy)]
    finally:
        await reporter.aclose()


async def test_the_reporter_closes_even_when_a_publish_in_flight_swallows_its_cancel() -> None:
    """As the provisioner's progress relay (tests/unit/test_provision_progress.py): a cancel lost inside a publish
    must not leave the drainer waiting on its queue for ever, which would hang the gateway's shutdown."""
    in_flight = asyncio.Event()
    published: list[Envelope] = []

    async def publish(event: Envelope) -> None:
        published.append(event)
        in_flight.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return  # the ack came as the cancel landed: the cancel is gone

    reporter = CallReporter(publish, instance="gw-1", busy_after_s=10)
    reporter.started(ref())
    reporter.finished(ref(), "m", "ok", latency_ms=1.0)
    await in_flight.wait()
    done, _ = await asyncio.wait([asyncio.ensure_future(reporter.aclose(flush_s=0.01))], timeout=10)
    assert done, "the reporter did not close"
    assert len(published) == 1

"""The gateway's call reports go out batched: the successful calls that end within one window as one
`BackendCallsCompleted`, in the order they ended; a failure or a busy report goes out at once; a close flushes."""

from __future__ import annotations

import asyncio

import pytest

from contracts.envelope import Envelope
from contracts.router import MAX_CALLS_PER_REPORT, BackendBusy, BackendCallsCompleted, BackendRef
from services.gateway.call_reports import CallReporter
from tests.harness.waiting import eventually

pytestmark = pytest.mark.unit


def ref(host: str) -> BackendRef:
    return BackendRef(host_id=host, kind="openai", base_url=f"http://{host}:8000/v1")


class Sent:
    """The reporter's publish: every message it was given, in order."""

    def __init__(self) -> None:
        self.messages: list[Envelope] = []

    async def __call__(self, message: Envelope) -> None:
        self.messages.append(message)

    def batches(self) -> list[BackendCallsCompleted]:
        return [m for m in self.messages if isinstance(m, BackendCallsCompleted)]

    def calls(self) -> list[tuple[str, str, float]]:
        return [(c.host_id, c.outcome, c.latency_ms) for b in self.batches() for c in b.calls]


async def test_the_calls_that_end_within_one_window_go_out_as_one_message_in_order() -> None:
    sent = Sent()
    reporter = CallReporter(sent, instance="gw-1", batch_window_s=0.3, busy_after_s=10)
    try:
        for i, host in enumerate(["a", "b", "a"]):
            reporter.started(ref(host))
            reporter.finished(ref(host), "m", "ok", latency_ms=float(i))

        async def out() -> bool:
            return bool(sent.messages)

        await eventually(out, 5, "the window's batch published")
        assert len(sent.messages) == 1
        (batch,) = sent.batches()
        assert batch.gateway_instance == "gw-1" and batch.producer == "gateway"
        assert sent.calls() == [("a", "ok", 0.0), ("b", "ok", 1.0), ("a", "ok", 2.0)]
        assert [c.in_flight for c in batch.calls] == [0, 0, 0]
        assert len({c.event_id for c in batch.calls}) == 3  # each call keeps its own identity
    finally:
        await reporter.aclose()


async def test_a_failure_ends_the_window_at_once_and_takes_the_waiting_successes_with_it() -> None:
    sent = Sent()
    reporter = CallReporter(sent, instance="gw-1", batch_window_s=3600, busy_after_s=10)
    try:
        reporter.started(ref("a"))
        reporter.finished(ref("a"), "m", "ok", latency_ms=1)
        await asyncio.sleep(0.05)  # the drainer holds the success for its window (an hour here)
        assert sent.messages == []
        reporter.started(ref("b"))
        reporter.finished(ref("b"), "m", "connect_refused", latency_ms=2)

        async def out() -> bool:
            return bool(sent.messages)

        await eventually(out, 5, "the failure published without waiting for the window")
        assert sent.calls() == [("a", "ok", 1.0), ("b", "connect_refused", 2.0)]
    finally:
        await reporter.aclose()


async def test_a_busy_report_is_not_held_and_keeps_its_place_after_the_calls_before_it() -> None:
    sent = Sent()
    reporter = CallReporter(sent, instance="gw-1", batch_window_s=3600, busy_after_s=0.05)
    try:
        reporter.started(ref("a"))
        reporter.finished(ref("a"), "m", "ok", latency_ms=1)
        reporter.started(ref("b"))  # still open after `busy_after_s`: told busy, at once

        async def out() -> bool:
            return len(sent.messages) == 2

        await eventually(out, 5, "the batch and the busy report published")
        first, second = sent.messages
        assert isinstance(first, BackendCallsCompleted) and [c.host_id for c in first.calls] == ["a"]
        assert isinstance(second, BackendBusy) and (second.host_id, second.in_flight) == ("b", 1)
    finally:
        await reporter.aclose()


async def test_a_batch_holds_at_most_the_contracts_limit_and_a_close_flushes_what_waits() -> None:
    sent = Sent()
    reporter = CallReporter(sent, instance="gw-1", batch_window_s=3600, busy_after_s=10, max_pending=4096)
    n = MAX_CALLS_PER_REPORT * 2 + 10
    for i in range(n):
        reporter.started(ref("a"))
        reporter.finished(ref("a"), "m", "ok", latency_ms=float(i))
    await asyncio.sleep(0.05)
    assert sent.messages == []  # every one a success: all wait for the window
    await reporter.aclose(flush_s=5)
    assert [len(b.calls) for b in sent.batches()] == [MAX_CALLS_PER_REPORT, MAX_CALLS_PER_REPORT, 10]
    assert [latency for _, _, latency in sent.calls()] == [float(i) for i in range(n)]


async def test_a_window_of_0_sends_each_report_alone() -> None:
    sent = Sent()
    reporter = CallReporter(sent, instance="gw-1", batch_window_s=0, busy_after_s=10)
    try:
        reporter.started(ref("a"))
        reporter.finished(ref("a"), "m", "ok", latency_ms=1)

        async def out() -> bool:
            return len(sent.calls()) == 1

        await eventually(out, 5, "the report published")
        assert len(sent.batches()[0].calls) == 1
    finally:
        await reporter.aclose()


async def test_the_end_of_a_call_the_routers_were_told_of_goes_out_at_once() -> None:
    """The routers count a backend told busy as serving until they hear the call ended: that report must not wait."""
    sent = Sent()
    reporter = CallReporter(sent, instance="gw-1", batch_window_s=3600, busy_after_s=0.02)
    try:
        reporter.started(ref("a"))

        async def told() -> bool:
            return any(isinstance(m, BackendBusy) for m in sent.messages)

        await eventually(told, 5, "the open call told")
        reporter.finished(ref("a"), "m", "ok", latency_ms=300)

        async def ended() -> bool:
            return sent.calls() == [("a", "ok", 300.0)]

        await eventually(ended, 5, "the told call's end published without waiting for the window")
        assert sent.batches()[0].calls[0].in_flight == 0
    finally:
        await reporter.aclose()

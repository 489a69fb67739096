"""The gateway's per-backend in-flight counts, its call reports (`BackendCallCompleted`, batched in
`BackendCallsCompleted`) and `BackendBusy` reports, published in the background."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable

from contracts.envelope import Envelope
from contracts.router import (
    MAX_CALLS_PER_REPORT,
    BackendBusy,
    BackendCallCompleted,
    BackendCallsCompleted,
    BackendRef,
    CallOutcome,
)
from services.runtime.tasks import LoopStop

log = logging.getLogger(__name__)


class CallReporter:
    """Counts the calls open on each backend and reports each one's end to the routers (docs/router.md, in-flight
    rule): best effort, never on the answer's path. Reports wait in a bounded queue drained by one task; when the
    bus is slower than the calls, the newest reports are dropped (and counted) rather than held in memory.

    A backend that has had calls open without a break for `busy_after_s` is told busy (`BackendBusy`, the count
    then), and again every `busy_refresh_s` while calls stay open, so that the routers know a backend that answers
    no check is busy serving, not hung; the refresh must come well within the routers' `in_flight_ttl_s` (30 s).
    Calls that each end within `busy_after_s`, one after another (small completions, even back to back), cost one
    report each, their `BackendCallCompleted`: the delay must stay well below the routers' check timeout (1 s),
    which is what the busy report is for.

    Call reports go out batched: a successful call's report waits up to `batch_window_s` for the calls that end after
    it, and all of them go out as one `BackendCallsCompleted` (at most `MAX_CALLS_PER_REPORT` a message), so a busy
    gateway sends the bus, and every router, one message per window instead of one per call. What ends the window at
    once: a failure (it counts toward a circuit), a busy report (a check needs it), and the end of a call on a
    backend the routers were told busy (their count of its open calls is too high until they hear it)."""

    def __init__(
        self,
        publish: Callable[[Envelope], Awaitable[None]],
        *,
        instance: str | None = None,
        max_pending: int = 1024,
        busy_refresh_s: float = 5.0,
        busy_after_s: float = 0.05,
        batch_window_s: float = 0.05,
    ):
        self.publish = publish
        self.instance = instance or f"gateway-{uuid.uuid4().hex[:12]}"
        self.in_flight: Counter[tuple[str, str]] = Counter()
        self.busy_refresh_s = busy_refresh_s
        self.busy_after_s = busy_after_s
        self.batch_window_s = batch_window_s
        self.dropped = 0
        self.failed = 0
        self._queue: asyncio.Queue[Envelope] = asyncio.Queue(max_pending)
        #: set when a report that must not wait (a failure, a busy report, the close) is queued: it ends the window
        self._urgent = asyncio.Event()
        #: reports taken from the queue and not yet published (the window's batch)
        self._held = 0
        self._drainer: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        #: the backend of every key counted, for its busy reports
        self._backends: dict[tuple[str, str], BackendRef] = {}
        #: backends whose open calls were told and not yet told ended (by a call report or a busy report of 0)
        self._told: set[tuple[str, str]] = set()
        #: per backend with calls open, a timer from when it last went from none open to one (told busy when it fires)
        self._busy_timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._stop_draining = LoopStop()

    def open_calls(self, backend: BackendRef) -> int:
        """Calls this gateway has open on `backend` now (exact: counted here, not reported)."""
        return self.in_flight[(backend.host_id, backend.base_url)]

    def started(self, backend: BackendRef) -> None:
        key = (backend.host_id, backend.base_url)
        self.in_flight[key] += 1
        if self.in_flight[key] == 1 and backend.kind != "fallback" and key not in self._busy_timers:
            self._backends[key] = backend  # the only publish a call start may cost, once `busy_after_s` has passed
            self._busy_timers[key] = asyncio.get_running_loop().call_later(self.busy_after_s, self._tell_busy, key)

    def _ended(self, key: tuple[str, str]) -> int:
        """One call on `key` is no longer open; the count left. At none, the backend's busy timer stops: the calls
        ended within `busy_after_s` of the first, and their call reports tell the routers all there was."""
        left = self.in_flight[key] = max(0, self.in_flight[key] - 1)
        if left == 0 and (timer := self._busy_timers.pop(key, None)) is not None:
            timer.cancel()
        return left

    def _tell_busy(self, key: tuple[str, str]) -> None:
        self._busy_timers.pop(key, None)
        if self.in_flight[key] <= 0:
            return
        self._told.add(key)
        self._enqueue(self._busy(key))
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.create_task(self._refresh(), name="gateway-busy-reports")

    def abandoned(self, backend: BackendRef) -> None:
        """A call the client gave up on: it no longer counts as open, and it says nothing about the backend (no call
        report); the last one's end is told as a busy report of 0, so routers stop counting the backend as serving."""
        key = (backend.host_id, backend.base_url)
        if self._ended(key) == 0 and key in self._told:
            self._told.discard(key)
            self._enqueue(self._busy(key))

    def finished(
        self,
        backend: BackendRef,
        model: str,
        outcome: CallOutcome,
        *,
        latency_ms: float,
        ttft_ms: float | None = None,
        status_code: int | None = None,
    ) -> None:
        key = (backend.host_id, backend.base_url)
        left = self._ended(key)
        told = key in self._told  # the routers count this backend's calls from a busy report: correct them at once
        if left == 0:
            self._told.discard(key)  # this report's count of 0 tells the end
        if backend.kind == "fallback":
            return  # the fallback is no HTTP backend of the fleet view: it has slots, not a circuit (docs/gateway.md)
        report = BackendCallCompleted(
            producer="gateway", host_id=backend.host_id, backend_url=backend.base_url, kind=backend.kind,
            model=model, outcome=outcome, status_code=status_code, latency_ms=round(max(latency_ms, 0.0), 3),
            ttft_ms=None if ttft_ms is None else round(max(ttft_ms, 0.0), 3), gateway_instance=self.instance,
            in_flight=self.in_flight[key],
        )  # fmt: skip
        self._enqueue(report, urgent=told or outcome != "ok")

    def _busy(self, key: tuple[str, str]) -> BackendBusy:
        b = self._backends[key]
        return BackendBusy(producer="gateway", host_id=b.host_id, backend_url=b.base_url, kind=b.kind,
                           gateway_instance=self.instance, in_flight=self.in_flight[key])  # fmt: skip

    def _enqueue(self, report: Envelope, *, urgent: bool = True) -> None:
        try:
            self._queue.put_nowait(report)
        except asyncio.QueueFull:
            self.dropped += 1
            return
        if urgent:
            self._urgent.set()
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="gateway-call-reports")

    async def _refresh(self) -> None:
        """While any call is open, tell each busy backend's count again every `busy_refresh_s`; ends when none is."""
        while True:
            await asyncio.sleep(self.busy_refresh_s)
            busy = [key for key, n in self.in_flight.items() if n > 0]
            if not busy:
                return
            for key in busy:
                self._enqueue(self._busy(key))

    async def _drain(self) -> None:
        while not self._stop_draining.requested:
            first = await self._queue.get()
            self._held = 1
            if not self._urgent.is_set():
                try:  # the window: the calls that end meanwhile go out in the same message
                    async with asyncio.timeout(self.batch_window_s):
                        await self._urgent.wait()
                except TimeoutError:
                    pass
            self._urgent.clear()
            held = [first]
            while not self._queue.empty():
                held.append(self._queue.get_nowait())
            self._held = len(held)
            for message in self._batched(held):
                try:
                    await self.publish(message)
                except Exception as exc:  # NATS down or slow: a lost report only delays passive health
                    self.failed += 1
                    log.debug("call report not published: %s", exc)
            self._held = 0

    def _batched(self, reports: list[Envelope]) -> list[Envelope]:
        """The reports in the order they were made: each run of call reports as one `BackendCallsCompleted` (split at
        `MAX_CALLS_PER_REPORT`), busy reports as they are."""
        out: list[Envelope] = []
        run: list[BackendCallCompleted] = []
        for report in [*reports, None]:
            if isinstance(report, BackendCallCompleted) and len(run) < MAX_CALLS_PER_REPORT:
                run.append(report)
                continue
            if run:
                out.append(BackendCallsCompleted(producer="gateway", gateway_instance=self.instance, calls=run))
                run = []
            if isinstance(report, BackendCallCompleted):
                run.append(report)
            elif report is not None:
                out.append(report)
        return out

    async def aclose(self, flush_s: float = 1.0) -> None:
        """Give queued reports up to `flush_s` to go out, then stop."""
        for timer in self._busy_timers.values():
            timer.cancel()
        self._busy_timers.clear()
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
        if self._drainer is None:
            return
        self._urgent.set()  # no window: what is queued goes out now
        try:
            async with asyncio.timeout(flush_s):
                while not self._queue.empty() or self._held:  # noqa: ASYNC110 - a bounded flush at shutdown only
                    await asyncio.sleep(0.01)
        except TimeoutError:
            pass
        await self._stop_draining(self._drainer)

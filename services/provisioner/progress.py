"""Relays a transfer's progress as evt.provisioner.progress.v1: at most one event per interval per download."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from types import TracebackType

from contracts.provisioner import ProvisionProgress
from services.provisioner import domain
from services.runtime.tasks import LoopStop

log = logging.getLogger(__name__)

Publish = Callable[[ProvisionProgress], Awaitable[None]]


class ProgressRelay:
    """`update()` may be called from any thread, as often as bytes arrive; the relay publishes on its own clock."""

    def __init__(self, publish: Publish, template: ProvisionProgress, interval_s: float = 0.5):
        self.publish = publish
        self.template = template
        self.meter = domain.TransferMeter(started=time.monotonic())
        self.gate = domain.ProgressGate(interval_s)
        self.status = "starting"
        self._sent: tuple[int, str] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = LoopStop()

    def update(self, done: int, total: int | None, status: str = "downloading") -> None:
        self.meter.done = done
        if total:
            self.meter.total = total
        self.status = status or self.status

    async def _emit(self) -> None:
        now = time.monotonic()
        if self._sent == (self.meter.done, self.status):
            return
        snap = self.meter.snapshot(now)
        self.gate.mark(now)
        self._sent = (snap.done, self.status)
        event = self.template.model_copy(
            update={
                "status": self.status,
                "completed_bytes": snap.done,
                "total_bytes": snap.total,
                "rate_bytes_per_s": snap.rate_bytes_per_s,
                "eta_s": snap.eta_s,
            }
        )
        try:
            await self.publish(event.model_copy(update={"event_id": uuid.uuid4(), "occurred_at": datetime.now(UTC)}))
        except Exception as exc:  # progress is best effort; the outcome goes through the outbox
            log.warning("progress event not published: %s", exc)

    async def _tick(self) -> None:
        # A ticker that outlived its transfer would keep the pull from returning (its command held by its heartbeat).
        while not self._stop.requested:
            await asyncio.sleep(max(self.gate.wait_s(time.monotonic()), 0.05))
            if not self._stop.requested and self.gate.wait_s(time.monotonic()) == 0:
                await self._emit()

    async def __aenter__(self) -> ProgressRelay:
        self._task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop(self._task)
        if et is None:
            await asyncio.sleep(self.gate.wait_s(time.monotonic()))
            await self._emit()

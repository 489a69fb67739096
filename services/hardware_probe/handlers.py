"""Probe publishers: the heartbeat timer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from faststream.nats import NatsBroker

from contracts.hardware import HostHeartbeat
from services.hardware_probe import domain
from services.runtime.bus import publish_event


def heartbeat_task(broker: NatsBroker, host_id: str, interval_s: float, ollama_url: str) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        """Emits evt.hardware.host.heartbeat.v1 every interval; each carries a fresh event_id."""
        while True:
            started = time.monotonic()
            await publish_event(
                broker,
                HostHeartbeat(producer="hardware-probe", host=host_id, host_id=host_id, interval_s=interval_s, ollama_url=ollama_url),
            )
            await asyncio.sleep(domain.next_delay(interval_s, time.monotonic() - started))

    return run

"""The provisioner's progress relay stops when its transfer ends, even when the stop's cancel is lost."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from contracts.provisioner import ProvisionProgress
from services.provisioner.progress import ProgressRelay

pytestmark = pytest.mark.unit


async def test_the_relay_stops_even_when_a_publish_in_flight_swallows_its_cancel() -> None:
    """On Python 3.11, asyncio.wait_for (inside nats-py's request) returns the reply and drops a cancel that lands as
    the reply arrives: the relay's ticker must stop all the same, or the pull that owns it never finishes."""
    in_flight = asyncio.Event()
    published: list[ProvisionProgress] = []

    async def publish(event: ProvisionProgress) -> None:
        published.append(event)
        if len(published) > 1:
            return  # acked at once
        in_flight.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return  # the ack came as the cancel landed: the cancel is gone

    template = ProvisionProgress(producer="provisioner", host="h", request_id=uuid.uuid4(), target_host="gpu-1",
                                 model="m", status="starting")  # fmt: skip

    # Not asyncio.timeout: its cancel would be swallowed the same way. A relay that does not stop never returns here.
    async def transfer() -> None:
        async with ProgressRelay(publish, template, interval_s=0.01) as relay:
            relay.update(1, 2, "downloading")
            await in_flight.wait()  # the ticker is inside a publish when the transfer ends
            relay.update(2, 2, "success")

    done, _ = await asyncio.wait([asyncio.ensure_future(transfer())], timeout=10)
    assert done, "the relay did not stop"
    assert published[0].completed_bytes == 1
    assert published[-1].status == "success" and published[-1].completed_bytes == 2

"""Probe publishers and responders: the sample timer (GpuSampled + HostHeartbeat + KV entry) and rpc sample."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from faststream.nats import NatsBroker
from nats.js.api import KeyValueConfig
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from contracts.hardware import HOSTS_BUCKET, GpuSampled, SampleRequest
from contracts.local_models import LocalModelsScanned
from contracts.subjects import fill
from services.hardware_probe import domain
from services.hardware_probe.local_models import LocalModels
from services.hardware_probe.sampler import PRODUCER, Sampler
from services.runtime.bus import publish_event
from services.runtime.rpc import Rpc

log = logging.getLogger(__name__)


async def hosts_bucket(broker: NatsBroker, history: int) -> KeyValue:
    """Bind the `hosts` bucket, creating it on first use (every probe may race to; creation is idempotent)."""
    js = broker.connection.jetstream()
    try:
        return await js.key_value(HOSTS_BUCKET)
    except BucketNotFoundError:
        return await js.create_key_value(
            KeyValueConfig(bucket=HOSTS_BUCKET, history=history, description="latest sample of each host")
        )


def sample_task(broker: NatsBroker, sampler: Sampler, history: int) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        """Every interval emits evt.hardware.gpu.sampled.v1 and evt.hardware.host.heartbeat.v1 and puts the sample
        under key <host id> in the `hosts` bucket. Each event has a fresh event_id (the dedup key)."""
        kv = await hosts_bucket(broker, history)
        try:
            while True:
                started = time.monotonic()
                sample = await sampler.sample()
                await publish_event(broker, sample)
                await kv.put(sampler.host_id, sample.model_dump_json().encode())
                await publish_event(broker, domain.heartbeat(sample, sampler.interval_s))
                await asyncio.sleep(domain.next_delay(sampler.interval_s, time.monotonic() - started))
        except asyncio.CancelledError:  # the service is stopping (a fault instead is restarted by the supervisor)
            await sampler.close()
            raise

    return run


def local_models_task(broker: NatsBroker, local: LocalModels) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        """Every probe interval scans MODELFLEET_MODEL_DIRS; emits evt.hardware.local_models.scanned.v1 when the
        listing changed and at least every report_s. Each event has a fresh event_id (the dedup key)."""

        async def publish(event: LocalModelsScanned) -> None:
            await publish_event(broker, event)

        await local.run(publish, PRODUCER)

    return run


def register(rpc: Rpc, sampler: Sampler) -> None:
    @rpc.handler(SampleRequest, subject=fill(SampleRequest.SUBJECT, host=sampler.host_id))
    async def on_sample(req: SampleRequest) -> GpuSampled:
        """Consumes rpc.probe.<host>.sample.v1; replies a fresh GpuSampled (not published). Read-only.

        The subject names this host, and one probe runs per host, so the queue group named for the service
        (`hardware-probe`) has one member; were a second probe started by mistake with the same host id, the two
        would share requests rather than both answer (one reply is what a caller of `ask` reads anyway).
        """
        return await sampler.sample()

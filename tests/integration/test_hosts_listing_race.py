"""The gateway's host listing (`latest_samples`) against a real NATS server while probes write and delete entries.

It once listed the `hosts` bucket's keys and then read each one: a key deleted in between raised and failed the
listing (a 500 from /api/v1/hosts). It then read the last entry of every key in one pass with nats-py's watcher, whose
end-of-entries marker may come before the entries: about 1.5 % of listings of an unchanging bucket came back empty
(a CI failure of the first test below). It now reads them with a pull consumer (services/runtime/kv_scan.py); a
deleted or purged key is left out. The provisioner's host directory reads the bucket the same way."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace
from typing import Any

import nats
import pytest

from contracts.hardware import HOSTS_BUCKET
from services.gateway.hosts_routes import latest_samples
from services.provisioner.hosts import HostDirectory
from tests.harness.provision_bus import Bus

pytestmark = pytest.mark.integration

#: Host ids of this test only: a shared NATS server (MODELFLEET_TEST_NATS_URL) may hold other tests' hosts.
PREFIX = f"race-{uuid.uuid4().hex[:8]}-"
HOSTS = [f"{PREFIX}{i:02d}" for i in range(40)]


async def mine(gateway_bus: Any) -> list[str]:
    return [s.host_id for s in await latest_samples(gateway_bus) if s.host_id.startswith(PREFIX)]


async def test_listing_while_hosts_are_deleted_and_written(nats_url, bus: Bus):
    for host in HOSTS:
        await bus.put_host(host, f"http://{host}:11434")
    nc = await nats.connect(nats_url)
    kv = await nc.jetstream().key_value(HOSTS_BUCKET)
    gateway_bus: Any = SimpleNamespace(broker=SimpleNamespace(connection=nc))
    try:
        # A key deleted, one purged: neither is listed (the last entry of each is a delete marker).
        await kv.delete(HOSTS[0])
        await kv.purge(HOSTS[1])
        assert await mine(gateway_bus) == HOSTS[2:]

        # Probes delete and write entries while the gateway lists: every listing completes, every sample is a
        # host of the fleet under its own key, and it never names a host twice.
        stop = asyncio.Event()
        churned = 0

        async def churn() -> None:
            nonlocal churned
            while not stop.is_set():
                for host in HOSTS[2:]:
                    await kv.delete(host)
                    await bus.put_host(host, f"http://{host}:11434")
                    churned += 1

        task = asyncio.create_task(churn())
        try:
            for _ in range(60):
                ids = await mine(gateway_bus)
                assert len(ids) == len(set(ids)) and set(ids) <= set(HOSTS[2:]), ids
                await asyncio.sleep(0)
        finally:
            stop.set()
            await task
        assert churned > len(HOSTS)  # the listings did run while entries were deleted and written again

        # Once the writes stop, the listing is every host written last.
        assert await mine(gateway_bus) == HOSTS[2:]
    finally:
        for host in HOSTS:
            await kv.purge(host)
        await nc.close()


async def test_a_key_whose_last_entry_is_a_delete_is_not_listed(nats_url, bus: Bus):
    host = f"{PREFIX}gone"
    await bus.put_host(host, None)  # creates the bucket when no probe has
    nc = await nats.connect(nats_url)
    gateway_bus: Any = SimpleNamespace(broker=SimpleNamespace(connection=nc))
    try:
        kv = await nc.jetstream().key_value(HOSTS_BUCKET)
        assert await mine(gateway_bus) == [host]
        await kv.delete(host)
        assert await mine(gateway_bus) == []
        await kv.put(host, b"not a sample")  # an incompatible writer: skipped, the listing goes on
        assert await mine(gateway_bus) == []
        await kv.purge(host)
    finally:
        await nc.close()


async def test_a_bucket_nobody_writes_lists_whole_every_time(nats_url, bus: Bus):
    """Hundreds of listings of 40 hosts written before: each lists all 40 (with nats-py's watcher about 1 in 70 came
    back empty, so 300 listings all but surely caught it), and so does the provisioner's directory."""
    for host in HOSTS:
        await bus.put_host(host, f"http://{host}:11434")
    nc = await nats.connect(nats_url)
    gateway_bus: Any = SimpleNamespace(broker=SimpleNamespace(connection=nc))
    directory = HostDirectory(SimpleNamespace(connection=nc), {}, ttl_s=0.0)  # type: ignore[arg-type]
    try:
        short = []
        for i in range(300):
            ids = await mine(gateway_bus)
            if ids != HOSTS:
                short.append((i, len(ids)))
        assert short == [], f"listings that missed hosts (listing, hosts listed): {short}"
        for _ in range(50):
            assert [h for h in await directory.all() if h.startswith(PREFIX)] == HOSTS
        info = await nc.jetstream().stream_info(f"KV_{HOSTS_BUCKET}")
        assert info.state.consumer_count == 0  # each listing removed its consumer
    finally:
        kv = await nc.jetstream().key_value(HOSTS_BUCKET)
        for host in HOSTS:
            await kv.purge(host)
        await nc.close()

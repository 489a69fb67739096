"""Chaos: NATS restarted under provisioning and request load, PostgreSQL restarted mid-provision. Every command
completes exactly once afterwards: counted in the EVENTS stream itself (what every consumer reads), not in what a
test subscription happened to see while the server was down."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from pathlib import Path

import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from services.provisioner.store import SCHEMA
from services.runtime.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from tests.harness.provision_bus import MIB, Bus, db_rows, provisioner_env, wait_for
from tests.harness.waiting import eventually
from tests.peers.ollama_server import OllamaPeer, library_model

pytestmark = pytest.mark.chaos

COMPLETED = "evt.provisioner.request.completed.v1"
MODELS = [f"chaos{i}:1b" for i in range(6)]


async def completions(nats_url: str) -> Counter[str]:
    """request_id -> how many `request.completed` facts the EVENTS stream holds for it."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(COMPLETED, stream="EVENTS",
                                      config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))  # fmt: skip
        seen: Counter[str] = Counter()
        while True:
            try:
                batch = await sub.fetch(100, timeout=1)
            except nats.errors.TimeoutError:
                return seen
            for msg in batch:
                seen[json.loads(msg.data)["request_id"]] += 1
                await msg.ack()
    finally:
        await nc.close()


async def health_load(nats_url: str, stop: asyncio.Event, tally: Counter[str]) -> None:
    """Requests all along: the provisioner's health asked every 20 ms; answers and failures are counted."""
    nc = await nats.connect(nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        while not stop.is_set():
            try:
                await nc.request("rpc.provisioner.health.v1", b"{}", timeout=1)
                tally["answered" if not stop.is_set() else "late"] += 1
            except Exception:
                tally["failed"] += 1
            await asyncio.sleep(0.02)
    finally:
        await nc.close()


async def test_nats_restarted_under_provisioning_and_request_load_loses_and_duplicates_nothing(
    service_env, database_url, tmp_path: Path, start_service
) -> None:
    server = EmbeddedNats(tmp_path / "nats", port=free_port()).start()
    library = [library_model(m, MIB) for m in MODELS]
    bus = Bus()
    stop_load = asyncio.Event()
    tally: Counter[str] = Counter()
    load: asyncio.Task[None] | None = None
    try:
        with OllamaPeer(library=library) as peer:
            peer.pull_step_s = 0.05  # each pull takes a while: the restart lands while some are under way
            env = provisioner_env(service_env, database_url, tmp_path, "http://127.0.0.1:9", {"gpu-1": peer.url},
                                  MODELFLEET_NATS_URL=server.url, MODELFLEET_RETRY_MAX_S="0.5")  # fmt: skip
            await start_service("provisioner", env)
            await bus.start(server.url)
            load = asyncio.create_task(health_load(server.url, stop_load, tally))
            commands = [await bus.provision(models=[m], hosts=["gpu-1"]) for m in MODELS]
            await wait_for(lambda: len(peer.pull_requests) >= 2, 60, "pulls under way")

            server.stop()  # mid-flow: pulls running, commands queued, health asks in flight
            server.start()
            answered_before = tally["answered"]

            async def answered_again() -> bool:
                return tally["answered"] > answered_before

            wanted = {str(c.request_id) for c in commands}

            async def all_completed() -> Counter[str] | None:
                seen = await completions(server.url)
                return seen if wanted <= set(seen) else None

            seen = await eventually(all_completed, 120, "every command completed after the restart")
            await eventually(answered_again, 30, "health answered again after the restart")
            assert {rid: seen[rid] for rid in wanted} == dict.fromkeys(wanted, 1)  # 0 lost, 0 duplicated
            assert set(MODELS) <= set(peer.installed)
    finally:
        stop_load.set()
        if load is not None:
            await load
        await bus.close()
        server.stop()
    assert tally["answered"] > 0


async def test_postgres_restarted_mid_provision_completes_once(
    service_env, nats_url, tmp_path: Path, start_service
) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg" / "data", port=free_port(), fsync=False).start()
    database_url = pg.url
    bus = await Bus().start(nats_url)
    peer = OllamaPeer(library=[library_model("pgchaos:1b", MIB)])
    try:
        with peer:
            peer.pull_gate = threading.Event()
            env = provisioner_env(service_env, database_url, tmp_path, "http://127.0.0.1:9", {"gpu-1": peer.url},
                                  MODELFLEET_RETRY_MAX_S="0.5")  # fmt: skip
            await start_service("provisioner", env)
            cmd = await bus.provision(models=["pgchaos:1b"], hosts=["gpu-1"])
            await wait_for(lambda: "pgchaos:1b" in peer.pull_requests, 30, "the pull under way")

            pg.stop()  # PostgreSQL goes away while the pull runs; the pull then finishes with nothing to write to
            peer.pull_gate.set()
            pg.start()

            done = await bus.completed(cmd.request_id, timeout_s=120)
            assert [a.action for a in done.actions] == ["pulled"]
            seen = await completions(nats_url)
            assert seen[str(cmd.request_id)] == 1
            rows = await db_rows(database_url, f"SELECT host FROM {SCHEMA}.inventory WHERE model_id LIKE '%pgchaos%'")
            assert len(rows) == 1, rows
    finally:
        if peer.pull_gate is not None:
            peer.pull_gate.set()
        await bus.close()
        pg.stop()

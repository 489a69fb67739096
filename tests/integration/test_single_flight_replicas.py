"""Single flight across provisioner replicas (a lease in the `flights` KV bucket of a real NATS server, inventory in
a real PostgreSQL, pulls counted by the Ollama peer): two replicas given the same pull at once download it once and
both report the outcome; a holder killed mid-pull stops renewing, its lease lapses and the other replica completes
the pull; a cached `present` is checked against the host before it is answered."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import nats
import pytest

from contracts.provisioner import ProvisionCommand
from services.provisioner.flights import lease_key
from services.runtime.bus import FLIGHTS_BUCKET
from tests.harness.provision_bus import db_rows, provisioner_env
from tests.harness.provisioner_replica import provisioner_replica
from tests.harness.waiting import eventually
from tests.peers.hub_server import HubPeer
from tests.peers.ollama_server import OllamaPeer, library_model

pytestmark = pytest.mark.integration

MODEL = "qwen3:8b"


@pytest.fixture
def ollama() -> Iterator[OllamaPeer]:
    with OllamaPeer(library=[library_model(MODEL, 8 << 20), library_model("broken:1b")]) as peer:
        yield peer


def _cmd(model: str = MODEL) -> ProvisionCommand:
    return ProvisionCommand(producer="tests", models=[model], hosts=["gpu-1"])


async def _lease(nats_url: str, model: str = MODEL) -> dict[str, object]:
    nc = await nats.connect(nats_url)
    try:
        entry = await (await nc.jetstream().key_value(FLIGHTS_BUCKET)).get(lease_key("gpu-1", model))
        return json.loads(entry.value or b"{}")
    finally:
        await nc.close()


async def test_two_replicas_given_the_same_pull_at_once_download_it_once(nats_url, database_url, ollama, tmp_path):
    gate = threading.Event()
    ollama.pull_gate = gate  # the pull holds before `success` until both replicas are in the flight
    hosts = {"gpu-1": ollama.url}
    async with (
        provisioner_replica(nats_url, database_url, tmp_path / "a", hosts, name="replica-a") as a,
        provisioner_replica(nats_url, database_url, tmp_path / "b", hosts, name="replica-b") as b,
    ):
        both = asyncio.gather(a.handle(_cmd()), b.handle(_cmd()))
        try:
            await eventually(
                lambda: _ready(a.lease.held + b.lease.held == 1 and a.lease.waiting + b.lease.waiting == 1),
                timeout_s=20,
                what="one replica holding the lease and the other waiting on it",
            )
            assert len(ollama.pull_requests) == 1
            assert (await _lease(nats_url))["state"] == "running"
        finally:
            gate.set()
        got_a, got_b = await asyncio.wait_for(both, timeout=30)

    assert [(r.model, r.target_host, r.action) for r in got_a + got_b] == [(MODEL, "gpu-1", "pulled")] * 2
    assert got_a[0].size_bytes == got_b[0].size_bytes == (8 << 20) + 485
    assert ollama.pull_requests == [MODEL]  # the peer saw exactly one pull
    assert (a.lease.joined + b.lease.joined, a.lease.taken_over + b.lease.taken_over) == (1, 0)
    lease = await _lease(nats_url)
    assert lease["state"] == "done" and lease["result"]["action"] == "pulled"  # type: ignore[index]
    rows = await db_rows(database_url, "SELECT host, model_id FROM provisioner.inventory")
    assert rows == [{"host": "gpu-1", "model_id": MODEL}]


async def test_holder_killed_mid_pull_its_lease_lapses_and_the_other_replica_completes_it(
    bus, nats_url, database_url, service_env, ollama, tmp_path, start_service
):
    ollama.pull_step_s = 0.25  # 16 steps per layer: the pull streams for seconds, so the kill lands mid-stream
    with HubPeer() as hub:
        env = provisioner_env(
            service_env,
            database_url,
            tmp_path,
            hub.url,
            {"gpu-1": ollama.url},
            MODELFLEET_FLIGHT_LEASE_TTL_S="2",
            MODELFLEET_FLIGHT_LEASE_POLL_S="0.1",
        )
        holder = await start_service("provisioner", env)
        cmd = await bus.provision(models=[MODEL], hosts=["gpu-1"])

        async def holding() -> dict[str, object] | None:
            lease = await _lease(nats_url)
            return lease if len(ollama.pull_requests) == 1 and lease["state"] == "running" else None

        first = await eventually(holding, timeout_s=20, what="the first replica pulling under its lease")
        assert str(holder.proc.pid) in str(first["owner"])
        other = await start_service("provisioner", env)
        holder.proc.kill()  # SIGKILL: no release, no outcome; the lease stays until it lapses
        holder.proc.wait(timeout=10)

        done = await bus.completed(cmd.request_id, timeout_s=60)
        assert [(a.model, a.target_host, a.action) for a in done.actions] == [(MODEL, "gpu-1", "pulled")]
        assert ollama.pull_requests == [MODEL, MODEL]  # the interrupted pull, then the one that completed
        assert MODEL in ollama.installed
        lease = await _lease(nats_url)
        assert lease["state"] == "done" and str(other.proc.pid) in str(lease["owner"])
        assert len(bus.of(cmd.request_id, ".model.pulled.v1")) == 1
        rows = await db_rows(database_url, "SELECT host, model_id FROM provisioner.inventory")
        assert rows == [{"host": "gpu-1", "model_id": MODEL}]


async def test_a_cached_present_is_checked_against_the_host(nats_url, database_url, ollama, tmp_path):
    async with provisioner_replica(nats_url, database_url, tmp_path / "a", {"gpu-1": ollama.url}, name="a") as a:
        role = ProvisionCommand(producer="tests", models=[MODEL], hosts=["gpu-1"])
        assert [r.action for r in await a.handle(role)] == ["pulled"]
        assert [r.action for r in await a.handle(_cmd())] == ["present"]  # from the cache, the host still has it
        with ollama.lock:
            del ollama.installed[MODEL]  # removed on the host behind the provisioner's back
        assert [r.action for r in await a.handle(_cmd())] == ["pulled"]
        assert ollama.pull_requests == [MODEL, MODEL]


async def _ready(value: bool) -> bool:
    return value

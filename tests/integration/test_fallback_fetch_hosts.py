"""A checkpoint fetch lands on the host that asked for it: two real provisioner processes on two host ids, each with
its own models directory, over real NATS and PostgreSQL, the hub peer serving the checkpoints; the inference
fallback's CheckpointFetcher (its real code, on a real connection) asks for host B, and B's provisioner fetches it."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from faststream.nats import NatsBroker

from contracts.dlq import DeadLetter
from contracts.envelope import Envelope
from contracts.health import HealthReply, HealthRequest
from contracts.provisioner import ProvisionCommand, ProvisionFetch
from contracts.subjects import COMMANDS_STREAM, dlq_subject, fill
from services.inference_fallback.fetch import CheckpointFetcher, FetchError, nats_subscribe
from services.runtime.bus import ensure_streams, publish_event
from services.runtime.rpc import Rpc
from tests.harness.provision_bus import provisioner_env
from tests.harness.waiting import eventually
from tests.peers.hub_server import HubPeer, small_file

pytestmark = pytest.mark.integration

REPO = "acme/tiny-ckpt"
HOSTS = ("host-a", "host-b")


@pytest.fixture
def hub() -> Any:
    with HubPeer() as peer:
        repo = peer.repo(REPO)
        commits = [repo.commit([small_file("config.json", f'{{"n": {n}}}'.encode()),
                                small_file("model.safetensors", bytes([n]) * 4096)]) for n in range(4)]  # fmt: skip
        yield peer, commits


@pytest.fixture
async def two_hosts(
    hub: Any, nats_url: str, database_url: str, service_env: Callable[..., dict[str, str]],
    start_service: Callable[..., Any], tmp_path: Path,
) -> AsyncIterator[dict[str, Any]]:  # fmt: skip
    peer, commits = hub
    for host in HOSTS:
        root = tmp_path / host
        await start_service("provisioner", provisioner_env(service_env, database_url, root, peer.url, {},
                                                           MODELFLEET_HOST_ID=host,
                                                           MODELFLEET_STATE_DIR=str(root / "state")))  # fmt: skip
    broker = NatsBroker(nats_url)
    await broker.connect()
    try:
        await ensure_streams(broker)
        rpc = Rpc(broker, "test-client")
        health = fill(HealthRequest.SUBJECT, service="provisioner")

        async def both() -> bool:
            replies: list[HealthReply] = await rpc.gather(HealthRequest(), subject=health, timeout_s=1)
            return {r.host for r in replies if r.healthy} >= set(HOSTS)

        await eventually(both, timeout_s=30, what="healthy provisioners on host-a and host-b")
        yield {"broker": broker, "rpc": rpc, "commits": commits, "peer": peer, "models": {h: tmp_path / h / "models"
                                                                                        for h in HOSTS}}  # fmt: skip
    finally:
        await broker.stop()


def fetcher(env: dict[str, Any], host: str, *, provisioner_timeout_s: float = 2.0) -> CheckpointFetcher:
    broker = env["broker"]

    async def publish(event: Envelope, subject: str) -> None:
        await publish_event(broker, event, subject)

    return CheckpointFetcher(env["rpc"], publish, nats_subscribe(lambda: broker.connection), host_id=host,
                             timeout_s=60, provisioner_timeout_s=provisioner_timeout_s)  # fmt: skip


async def test_each_fetch_lands_in_the_models_directory_of_the_host_that_asked(two_hosts: dict[str, Any]) -> None:
    commits, peer, models = two_hosts["commits"], two_hosts["peer"], two_hosts["models"]
    commands: list[str] = []

    async def record(msg: Any) -> None:
        commands.append(msg.subject)

    nc = two_hosts["broker"].connection
    await nc.subscribe("cmd.provisioner.>", cb=record)
    on_b = fetcher(two_hosts, "host-b")
    # four fetches for host-b: were the command on a queue both provisioners share, some would land on host-a
    for commit in commits:
        assert await on_b.fetch(REPO, commit) == (commit, "host-b")
        served = peer.repos[REPO].commits[commit]["model.safetensors"].sha256
        assert hashlib.sha256((models["host-b"] / REPO / commit / "model.safetensors").read_bytes()).hexdigest() == (
            served
        )
    assert not (models["host-a"] / REPO).exists()
    # and one for host-a lands there
    assert await fetcher(two_hosts, "host-a").fetch(REPO, commits[0]) == (commits[0], "host-a")
    assert (models["host-a"] / REPO / commits[0] / "model.safetensors").is_file()
    await nc.flush()
    fetch_b, fetch_a = (fill(ProvisionFetch.SUBJECT, host=h) for h in ("host-b", "host-a"))
    assert commands == [fetch_b] * len(commits) + [fetch_a]  # never the shared cmd.provisioner.provision.v1
    assert ProvisionCommand.SUBJECT not in commands


async def test_a_fetch_for_a_host_without_a_provisioner_is_a_503_naming_the_host(two_hosts: dict[str, Any]) -> None:
    commands: list[str] = []

    async def record(msg: Any) -> None:
        commands.append(msg.subject)

    nc = two_hosts["broker"].connection
    await nc.subscribe("cmd.provisioner.>", cb=record)
    with pytest.raises(FetchError) as refused:
        await fetcher(two_hosts, "host-c", provisioner_timeout_s=0.5).fetch(REPO, two_hosts["commits"][0])
    error = refused.value
    assert (error.status, error.code, error.field) == (503, "no_provisioner", "fallback.repo")
    assert "no healthy provisioner runs on host host-c" in str(error.detail)
    assert "answered from host-a, host-b only" in str(error.detail)  # the others are named, and not used
    await nc.flush()
    assert commands == []  # nothing was asked of anyone


async def test_a_fetch_command_that_can_never_succeed_is_dead_lettered_by_that_hosts_consumer(
    two_hosts: dict[str, Any],
) -> None:
    subject = fill(ProvisionFetch.SUBJECT, host="host-b")
    letters: list[DeadLetter] = []

    async def record(msg: Any) -> None:
        letters.append(DeadLetter.model_validate_json(msg.data))

    nc = two_hosts["broker"].connection
    await nc.subscribe(dlq_subject(subject), cb=record)
    await nc.flush()
    await nc.jetstream().publish(subject, b'{"models": "not a list"}', stream=COMMANDS_STREAM)
    [letter] = await eventually(lambda: _some(letters), timeout_s=30, what=f"a dead letter on {dlq_subject(subject)}")
    assert (letter.original_subject, letter.consumer) == (subject, "provisioner-host-b")
    assert "ValidationError" in letter.reason


async def _some(items: list[DeadLetter]) -> list[DeadLetter] | None:
    return list(items) or None

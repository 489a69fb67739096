"""rpc.provisioner.audit.v1 against the provisioner process on real NATS + PostgreSQL with the Ollama peer: the rows
provisioning writes, newest first, filtered by request id, host, model, time and limit; bad filters are typed 422s."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from contracts.provisioner import AUDIT_LIMIT_MAX, AuditReply, AuditRequest
from contracts.rpc import RPC_HEADER, ErrorReply, RpcError
from tests.harness.provision_bus import Bus, provisioner_env
from tests.peers.hub_server import HubPeer
from tests.peers.ollama_server import OllamaPeer, library_model

pytestmark = pytest.mark.integration


@pytest.fixture
def peers() -> Iterator[tuple[OllamaPeer, HubPeer]]:
    library = [library_model("qwen3:8b", 4 << 20), library_model("small:1b", 1 << 20)]
    with OllamaPeer(library=library) as ollama, HubPeer() as hub:
        yield ollama, hub


async def audit(bus: Bus, **filters: object) -> AuditReply:
    return AuditReply.model_validate(await bus.request(AuditRequest.SUBJECT, AuditRequest.model_validate(filters)))


async def test_audit_trail_newest_first_and_filtered(bus, peers, service_env, database_url, tmp_path, start_service):
    ollama, hub = peers
    before = datetime.now(UTC) - timedelta(seconds=1)
    await start_service(
        "provisioner", provisioner_env(service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url})
    )
    first = await bus.provision(models=["qwen3:8b"], requested_by="alice")
    await bus.completed(first.request_id)
    second = await bus.provision(models=["small:1b", "missing:7b"], requested_by="bob")
    await bus.completed(second.request_id)

    everything = (await audit(bus)).entries
    seen = [(e.model, e.action, e.result) for e in everything]
    # the second request's two models run at once: either may be audited first, both after the first request's
    assert sorted(seen[:2]) == [("missing:7b", "provision", "failed"), ("small:1b", "pull", "ok")]
    assert seen[2:] == [("qwen3:8b", "pull", "ok")]
    assert [e.id for e in everything] == sorted((e.id for e in everything), reverse=True), "newest first"
    assert all(e.host == "gpu-1" and e.at >= before for e in everything)
    pulled = next(e for e in everything if e.model == "qwen3:8b")
    assert (pulled.actor, pulled.request_id, pulled.detail) == ("alice", first.request_id, None)
    failed = next(e for e in everything if e.model == "missing:7b")
    assert (failed.actor, failed.request_id, failed.result) == ("bob", second.request_id, "failed")
    assert failed.detail and "file does not exist" in failed.detail

    by_request = (await audit(bus, request_id=second.request_id)).entries
    assert sorted(e.model for e in by_request) == ["missing:7b", "small:1b"]
    assert [e.model for e in (await audit(bus, model="qwen3:8b")).entries] == ["qwen3:8b"]
    assert (await audit(bus, host="elsewhere")).entries == []
    assert len((await audit(bus, host="gpu-1", limit=2)).entries) == 2
    assert (await audit(bus, limit=1)).entries[0].id == everything[0].id
    assert (await audit(bus, since=datetime.now(UTC) + timedelta(minutes=1))).entries == []
    assert len((await audit(bus, since=before)).entries) == 3


async def test_audit_bad_filters_are_typed_422_naming_the_field(bus, peers, service_env, database_url, tmp_path,
                                                               start_service):  # fmt: skip
    ollama, hub = peers
    await start_service(
        "provisioner", provisioner_env(service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url})
    )
    for payload, field in [
        (b'{"limit": 0}', "limit"),
        (f'{{"limit": {AUDIT_LIMIT_MAX + 1}}}'.encode(), "limit"),
        (b'{"request_id": "not-a-uuid"}', "request_id"),
        (b'{"host": ""}', "host"),
        (b'{"since": "yesterday"}', "since"),
    ]:
        msg = await bus.nc.request(AuditRequest.SUBJECT, payload, timeout=10)
        assert (msg.headers or {}).get(RPC_HEADER) == "error", msg.data
        error = RpcError.from_body(ErrorReply.model_validate_json(msg.data).error)
        assert (error.status, error.field) == (422, field), (payload, error)

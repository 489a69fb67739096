"""The provisioner's rpc hops on real NATS: typed 404/422 replies, and its catalog client's retries."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from faststream.nats import NatsBroker

from contracts.catalog import RoleEntry
from contracts.provisioner import InventoryDeleteRequest, QuantizationsReply, QuantizationsRequest
from contracts.rpc import RPC_HEADER, ErrorBody, ErrorReply, RpcError
from services.provisioner.catalog_client import CatalogClient
from services.provisioner.outcomes import Failure
from services.runtime.rpc import Rpc
from tests.harness.provision_bus import MIB, Bus, provisioner_env
from tests.peers.hub_server import HubPeer, generated_file
from tests.peers.ollama_server import OllamaPeer

pytestmark = pytest.mark.integration

REPO = "acme/tiny-GGUF"


async def raw_error(bus: Bus, subject: str, payload: bytes) -> RpcError:
    """Ask on the wire as any bus user would; the answer must be the seam's error frame, well before the timeout."""
    started = time.monotonic()
    msg = await bus.nc.request(subject, payload, timeout=10)
    assert time.monotonic() - started < 5, "answered, not left to time out"
    assert (msg.headers or {}).get(RPC_HEADER) == "error", msg.data
    return RpcError.from_body(ErrorReply.model_validate_json(msg.data).error)


async def test_hub_and_inventory_errors_are_typed_replies_with_their_field(
    bus, service_env, database_url, tmp_path, start_service
):
    with OllamaPeer() as ollama, HubPeer() as hub:
        repo = hub.repo(REPO)
        repo.tag("v1", repo.commit([generated_file("tiny.Q4_K_M.gguf", 2 * MIB, seed=1)]))
        env = provisioner_env(service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url})
        await start_service("provisioner", env)
        subject = QuantizationsRequest.SUBJECT

        ok = await bus.request(subject, QuantizationsRequest(repo_id=REPO, revision="v1"))
        assert [q.quantization for q in QuantizationsReply.model_validate(ok).quantizations] == ["Q4_K_M"]

        cases = [
            (QuantizationsRequest(repo_id="no/such", revision="v1").model_dump_json().encode(), 404, "repo_id"),
            (QuantizationsRequest(repo_id=REPO, revision="f" * 40).model_dump_json().encode(), 404, "revision"),
            (QuantizationsRequest(repo_id=REPO, revision="nope").model_dump_json().encode(), 422, "revision"),
            (QuantizationsRequest(repo_id="../x").model_dump_json().encode(), 422, "repo_id"),
            (b'{"repo_id": ""}', 422, "repo_id"),  # refused by the contract, before the handler runs
            (b"not json", 422, None),
        ]
        for payload, status, field in cases:
            error = await raw_error(bus, subject, payload)
            assert (error.status, error.field) == (status, field), (payload, error)
            assert error.code == ("not_found" if status == 404 else "invalid_request")
        missing = await raw_error(bus, subject, cases[0][0])
        assert "no/such" in str(missing.detail)

        delete = InventoryDeleteRequest.SUBJECT
        unknown_host = InventoryDeleteRequest(host="nowhere", model="qwen3:8b").model_dump_json().encode()
        never = InventoryDeleteRequest(host="gpu-1", model="never-installed:1b").model_dump_json().encode()
        assert ((e := await raw_error(bus, delete, unknown_host)).status, e.field) == (404, "host")
        assert ((e := await raw_error(bus, delete, never)).status, e.field) == (404, "model")
        assert "never-installed:1b" in str(e.detail)


@pytest.fixture
async def rpc(nats_url: str) -> AsyncIterator[Rpc]:
    broker = NatsBroker(servers=nats_url, logger=None)
    await broker.connect()
    try:
        yield Rpc(broker, "provisioner")
    finally:
        await broker.stop()


async def test_catalog_client_reads_the_roles_the_catalog_answers(bus: Bus, rpc: Rpc) -> None:
    await bus.serve_catalog([RoleEntry(role="general", model_ref="qwen3:8b", provider="ollama")], "lab")
    reply = await CatalogClient(rpc, timeout_s=2).roles()
    assert reply.profile_set == "lab" and [r.model_ref for r in reply.roles] == ["qwen3:8b"]


async def test_catalog_client_retries_a_silent_catalog_then_fails_clearly(bus: Bus, rpc: Rpc) -> None:
    await bus.serve_catalog(silent=True)
    client = CatalogClient(rpc, timeout_s=0.3, attempts=3, backoff_s=0.01)
    with pytest.raises(Failure) as caught:
        await client.roles()
    assert bus.catalog_asks == 3
    text = str(caught.value)
    assert "did not answer rpc.catalog.roles.v1 (3 tries)" in text and "504 timeout" in text and "0.3 s" in text


async def test_catalog_client_retries_no_catalog_at_all(rpc: Rpc) -> None:
    with pytest.raises(Failure) as caught:
        await CatalogClient(rpc, timeout_s=5, attempts=2, backoff_s=0.01).roles()
    assert "(2 tries): 503 no_responders" in str(caught.value)


async def test_catalog_client_fails_at_once_with_the_catalogs_own_error(bus: Bus, rpc: Rpc) -> None:
    detail = "profile_set: no profile set 'lab'"
    await bus.serve_catalog(error=ErrorBody(status=404, code="not_found", detail=detail, field="profile_set"))
    with pytest.raises(Failure) as caught:
        await CatalogClient(rpc, timeout_s=2, attempts=3, backoff_s=0.01).roles()
    assert bus.catalog_asks == 1  # a refusal is not retried: asking again gets the same answer
    assert str(caught.value) == f"the catalog refused rpc.catalog.roles.v1: 404 not_found: {detail}"
    cause = caught.value.__cause__
    assert isinstance(cause, RpcError) and (cause.status, cause.field) == (404, "profile_set")

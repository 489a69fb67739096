"""A role's `fallback: {repo, revision}` that is not on the fallback's host is fetched through the provisioner: the real
inference-fallback and provisioner processes over NATS and PostgreSQL, the hub peer serving a tiny random Llama
checkpoint (real tokenizer), real transformers loading what the provisioner fetched and verified."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from faststream.nats import NatsBroker

from contracts.catalog import RoleEntry
from contracts.fallback import (
    ChatMessage,
    FallbackSpec,
    GenerateEnd,
    GenerateRequest,
    SlotInfo,
    SlotsReply,
    SlotsRequest,
)
from contracts.provisioner import ProvisionCommand
from contracts.rpc import RpcError
from services.runtime.bus import ensure_streams
from services.runtime.rpc import Rpc
from tests.harness.no_gpu import no_gpu_env
from tests.harness.provision_bus import MIB, Bus, provisioner_env
from tests.harness.tiny_llama import build_tiny_llama
from tests.harness.waiting import eventually
from tests.peers.hub_server import HubPeer, small_file

pytestmark = pytest.mark.integration

REPO = "acme/tiny-llama"
GONE = "acme/no-such-model"
HELLO = [ChatMessage(role="user", content="Say something.")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture
def hub(tiny: Path) -> Any:
    with HubPeer() as peer:
        repo = peer.repo(REPO)
        files = [small_file(p.name, p.read_bytes()) for p in sorted(tiny.iterdir()) if p.is_file()]
        commit = repo.commit([small_file("README.md", b"# tiny llama"), *files])
        repo.tag("v1", commit)
        yield peer, commit


@pytest.fixture
async def fleet(
    hub: Any, tiny: Path, nats_url: str, database_url: str, service_env: Callable[..., dict[str, str]],
    start_service: Callable[..., Any], tmp_path: Path,
) -> AsyncIterator[dict[str, Any]]:  # fmt: skip
    peer, commit = hub
    roles = {
        "coding": FallbackSpec(repo=REPO, revision=commit),
        "tagged": FallbackSpec(repo=REPO, revision="v1"),
        "broken": FallbackSpec(repo=GONE, revision="0" * 40),
        "general": FallbackSpec(path=str(tiny)),  # on disk: answers while another slot is being fetched
    }
    bus = await Bus().start(nats_url)
    await bus.serve_catalog([RoleEntry(role=r, model_ref="qwen3:8b", provider="ollama", fallback=s)
                             for r, s in roles.items()])  # fmt: skip
    broker = NatsBroker(nats_url)
    try:
        await start_service("provisioner", provisioner_env(service_env, database_url, tmp_path, peer.url, {}))
        await start_service("inference-fallback", service_env(
            MODELFLEET_FALLBACK_MODELS_DIR=str(tmp_path / "models"),  # the provisioner's (provisioner_env)
            MODELFLEET_FALLBACK_OLLAMA_MODELS=str(tmp_path / "ollama"), MODELFLEET_FALLBACK_FETCH_TIMEOUT_S="120",
            **no_gpu_env(),
        ))  # fmt: skip
        await broker.connect()
        await ensure_streams(broker)
        yield {
            "rpc": Rpc(broker, "test-client"),
            "bus": bus,
            "hub": peer,
            "commit": commit,
            "models": tmp_path / "models",
        }
    finally:
        peer.release()
        await broker.stop()
        await bus.close()


async def generate(rpc: Rpc, role: str) -> GenerateEnd:
    request = GenerateRequest(role=role, model_ref="qwen3:8b", messages=HELLO, max_tokens=4, options={"temperature": 0})
    ends = [item async for item in rpc.stream(request, timeout_s=180) if isinstance(item, GenerateEnd)]
    assert len(ends) == 1
    return ends[0]


async def slot(rpc: Rpc, key: str) -> SlotInfo | None:
    reply: SlotsReply = await rpc.ask(SlotsRequest(), timeout_s=10)
    return next((s for s in reply.slots if s.key == key), None)


async def test_a_repo_fallback_not_on_disk_is_fetched_verified_loaded_and_answers(fleet: dict[str, Any]) -> None:
    rpc, peer, commit, bus = fleet["rpc"], fleet["hub"], fleet["commit"], fleet["bus"]
    folder = fleet["models"] / REPO / commit
    assert not folder.exists()

    async def sourced() -> SlotsReply | None:  # the roles come from the catalog after the service is up
        reply: SlotsReply = await rpc.ask(SlotsRequest(), timeout_s=10)
        return reply if reply.sources.get("coding") else None

    reply = await eventually(sourced, timeout_s=30, what="the coding role's fallback source")
    assert reply.sources["coding"] == f"repo {REPO}@{commit}"  # servable before it is fetched

    peer.stall_after = MIB  # the weights' body waits mid-way: the slot shows `fetching` meanwhile
    coding = asyncio.create_task(generate(rpc, "coding"))

    async def fetching() -> SlotInfo | None:
        found = await slot(rpc, "coding")
        return found if found is not None and found.state == "fetching" else None

    shown = await eventually(fetching, timeout_s=60, what="the coding slot in state fetching")
    assert (shown.source, shown.source_kind, shown.memory_bytes) == (f"repo {REPO}@{commit}", "repo", 0)
    # another slot loads and answers while this one waits for the provisioner
    general = await generate(rpc, "general")
    assert general.completion_tokens > 0 and not coding.done()

    peer.release()
    end = await coding
    assert (end.slot, end.model, end.path) == ("coding", f"repo {REPO}@{commit}", "torch_cpu")
    assert end.completion_tokens > 0
    tree = peer.repos[REPO].commits[commit]
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() == tree["model.safetensors"].sha256
    assert (folder / "chat_template.jinja").is_file()  # the chat template came with it
    ready = await slot(rpc, "coding")
    assert ready is not None and ready.state == "ready" and ready.memory_bytes > 0
    [completed] = [e for s, e, _ in bus.events if s == "evt.provisioner.request.completed.v1"
                   and any(a["model"] == f"{REPO}@{commit}" for a in e["actions"])]  # fmt: skip
    assert [(a["action"], a["revision"]) for a in completed["actions"]] == [("imported", commit)]

    # a tag: the provisioner pins it to its commit (already on disk: verified, nothing downloaded again)
    served = sum(peer.served.values())
    tagged = await generate(rpc, "tagged")
    assert (tagged.model, tagged.completion_tokens > 0) == (f"repo {REPO}@v1", True)
    assert sum(peer.served.values()) == served


async def test_a_failing_fetch_is_the_typed_error_naming_the_repo_and_the_reason(fleet: dict[str, Any]) -> None:
    rpc = fleet["rpc"]
    with pytest.raises(RpcError) as failed:
        await generate(rpc, "broken")
    error = failed.value
    assert (error.status, error.code, error.field) == (502, "fetch_failed", "fallback.repo")
    assert f"the provisioner could not fetch {GONE}@{'0' * 40}: failed on test-host: " in str(error.detail)
    assert "NotFound" in str(error.detail)  # the hub's answer, as the provisioner reported it
    shown = await slot(rpc, "broken")
    assert shown is not None and shown.state == "failed" and GONE in (shown.error or "")
    # the next request asks again (and fails the same way): a failed fetch is not remembered as final
    with pytest.raises(RpcError) as again:
        await generate(rpc, "broken")
    assert again.value.code == "fetch_failed"


async def test_without_a_provisioner_the_request_fails_at_once_naming_the_repo(
    nats_url: str, service_env: Callable[..., dict[str, str]], start_service: Callable[..., Any], tmp_path: Path
) -> None:
    bus = await Bus().start(nats_url)
    await bus.serve_catalog([RoleEntry(role="coding", model_ref="qwen3:8b", provider="ollama",
                                       fallback=FallbackSpec(repo=REPO, revision="1" * 40))])  # fmt: skip
    broker = NatsBroker(nats_url)
    try:
        await start_service("inference-fallback", service_env(
            MODELFLEET_FALLBACK_MODELS_DIR=str(tmp_path / "models"),
            MODELFLEET_FALLBACK_OLLAMA_MODELS=str(tmp_path / "ollama"), **no_gpu_env(),
        ))  # fmt: skip
        await broker.connect()
        await ensure_streams(broker)
        commands: list[Any] = []

        async def record(msg: Any) -> None:
            commands.append(msg)

        await bus.nc.subscribe(ProvisionCommand.SUBJECT, cb=record)
        with pytest.raises(RpcError) as refused:
            await generate(Rpc(broker, "test-client"), "coding")
        assert (refused.value.status, refused.value.code, refused.value.field) == (
            503,
            "no_provisioner",
            "fallback.repo",
        )
        assert f"{REPO}@{'1' * 40} is not in this host's models directory" in str(refused.value.detail)
        await bus.nc.flush()
        assert not commands  # nothing was asked of anyone: the command would wait in the stream for nobody
    finally:
        await broker.stop()
        await bus.close()

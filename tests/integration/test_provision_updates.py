"""The update check for Ollama-library models: the provisioner process compares each host's manifest digest
(`/api/tags`) with the registry's (`/v2/{namespace}/{model}/manifests/{tag}`), both served by the Ollama peer."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from services.provisioner import domain
from services.provisioner.registry import MANIFEST_V2, OllamaRegistry, RegistryError
from tests.harness.provision_bus import Bus, db_rows, provisioner_env
from tests.peers.hub_server import HubPeer
from tests.peers.ollama_server import OllamaPeer, library_model

pytestmark = pytest.mark.integration

QWEN_MANIFEST = "/v2/library/qwen3/manifests/8b"


@pytest.fixture
def peers():
    library = [
        library_model("qwen3:8b", 2 << 20),
        library_model("acme/coder:1b"),
        library_model("hf.co/u/r-GGUF:Q4_K_M"),
    ]
    with OllamaPeer(library=library) as ollama, HubPeer() as hub:
        yield ollama, hub


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def check_state(database_url: str) -> dict[str, Any] | None:
    rows = await db_rows(database_url, "SELECT value FROM provisioner.state WHERE key = 'update_check'")
    if not rows:
        return None
    value = rows[0]["value"]
    return json.loads(value) if isinstance(value, str) else value


async def until(probe: Callable[[], Awaitable[Any]], what: str, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if got := await probe():
            return got
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def updates(bus: Bus, model: str | None = None) -> list[dict[str, Any]]:
    return [e for s, e, _ in bus.events if s.endswith("update.available.v1") and model in (None, e["model"])]


async def test_registry_client_reads_the_digest_header_or_hashes_the_body_and_names_errors(peers):
    ollama, _ = peers
    registry = OllamaRegistry(timeout_s=5)
    try:
        want = "sha256:" + ollama.library["qwen3:8b"].digest
        ref = domain.registry_ref("qwen3:8b", ollama.url)
        assert await registry.digest(ref) == want
        ollama.registry_digest_header = False
        assert await registry.digest(ref) == want  # sha256 of the body, as Ollama computes its local digest
        assert ollama.registry_requests[-1] == (QWEN_MANIFEST, MANIFEST_V2)
        assert await registry.digest(domain.registry_ref("acme/coder:1b", ollama.url)) == (
            "sha256:" + ollama.library["acme/coder:1b"].digest
        )
        with pytest.raises(RegistryError, match="404") as missing:
            await registry.digest(domain.registry_ref("nope:7b", ollama.url))
        assert missing.value.status == 404
        ollama.registry_error = (503, "maintenance")
        with pytest.raises(RegistryError, match="HTTP 503") as down:
            await registry.digest(ref)
        assert down.value.status == 503
        with pytest.raises(RegistryError, match="unreachable") as gone:
            await registry.digest(domain.registry_ref("qwen3:8b", f"http://127.0.0.1:{closed_port()}"))
        assert gone.value.status is None
    finally:
        await registry.close()


async def test_upstream_update_is_found_published_with_both_digests_and_pulled_with_force(
    bus, peers, service_env, database_url, tmp_path, start_service
):
    ollama, hub = peers
    ollama.install("local-only:1b")  # created on the host: no registry has it
    env = provisioner_env(service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url},
                          MODELFLEET_PROVISIONER_UPDATE_INTERVAL_S="1",
                          MODELFLEET_PROVISIONER_OLLAMA_REGISTRY=ollama.url)  # fmt: skip
    await start_service("provisioner", env)
    models = ["qwen3:8b", "acme/coder:1b", "hf.co/u/r-GGUF:Q4_K_M", "local-only:1b"]
    done = await bus.completed((await bus.provision(models=models)).request_id)
    assert [a.action for a in done.actions] == ["pulled", "pulled", "pulled", "present"]
    old = ollama.installed["qwen3:8b"].digest
    assert old == ollama.library["qwen3:8b"].digest  # the peer's /api/tags digest is the manifest's sha256

    async def full_check() -> dict[str, Any] | None:
        state = await check_state(database_url)
        return state if state and state["checked"] == 2 and state["errors"] else None

    state = await until(full_check, "a check covering the pulled models")
    assert not updates(bus)  # pulled just now: nothing newer upstream
    [error] = state["errors"]
    assert (error["model"], error["host"]) == ("local-only:1b", "gpu-1") and "404" in error["reason"]
    [skipped] = state["not_checked"]
    assert skipped["model"] == "hf.co/u/r-GGUF:Q4_K_M" and "Hugging Face pass-through" in skipped["reason"]
    assert not any("hf.co" in path for path, _ in ollama.registry_requests)

    new = ollama.publish_update("qwen3:8b")
    assert new != old
    await until(lambda: asyncio.sleep(0, updates(bus, "qwen3:8b")), "update.available for qwen3:8b")
    event = updates(bus, "qwen3:8b")[0]
    assert (event["installed_digest"], event["remote_digest"]) == (f"sha256:{old}", f"sha256:{new}")
    assert (event["installed_revision"], event["remote_revision"]) == (f"sha256:{old}", f"sha256:{new}")
    assert (event["target_host"], event["source"], event["registry"]) == ("gpu-1", "curated", ollama.url)
    assert not updates(bus, "acme/coder:1b")

    pulls = ollama.calls["POST /api/pull"]
    [plain] = (await bus.completed((await bus.provision(models=["qwen3:8b"])).request_id)).actions
    assert plain.action == "present" and ollama.calls["POST /api/pull"] == pulls  # an update is only offered
    forced = await bus.provision(models=["qwen3:8b"], force=True)
    [pulled] = (await bus.completed(forced.request_id)).actions
    assert pulled.action == "pulled" and ollama.calls["POST /api/pull"] == pulls + 1
    assert ollama.installed["qwen3:8b"].digest == new
    assert [e["model"] for e in bus.of(forced.request_id, ".model.pulled.v1")] == ["qwen3:8b"]

    seen = ollama.calls[f"GET {QWEN_MANIFEST}"]
    # the check that made request seen+2 started after the pull ended; by request seen+3 it has stored its result
    await until(lambda: asyncio.sleep(0, ollama.calls[f"GET {QWEN_MANIFEST}"] >= seen + 3), "two more checks")
    state = await check_state(database_url)
    assert state and state["found"] == 0 and state["checked"] == 2
    assert not [e for e in updates(bus, "qwen3:8b") if e["installed_digest"] == f"sha256:{new}"]
    [again] = (await bus.completed((await bus.provision(models=["qwen3:8b"], force=True)).request_id)).actions
    assert again.action == "present" and ollama.calls["POST /api/pull"] == pulls + 1  # up to date: no pull


async def test_unreachable_registry_is_recorded_and_the_checker_keeps_going(
    bus, peers, service_env, database_url, tmp_path, start_service
):
    ollama, hub = peers
    env = provisioner_env(service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url},
                          MODELFLEET_PROVISIONER_UPDATE_INTERVAL_S="1",
                          MODELFLEET_PROVISIONER_OLLAMA_REGISTRY=f"http://127.0.0.1:{closed_port()}")  # fmt: skip
    proc = await start_service("provisioner", env)
    [action] = (await bus.completed((await bus.provision(models=["qwen3:8b"])).request_id)).actions
    assert action.action == "pulled"

    async def failed_check() -> dict[str, Any] | None:
        state = await check_state(database_url)
        return state if state and state["errors"] else None

    first = await until(failed_check, "a check that could not reach the registry")
    [error] = first["errors"]
    assert error["model"] == "qwen3:8b" and "unreachable" in error["reason"] and first["checked"] == 0

    async def later_check() -> dict[str, Any] | None:
        state = await failed_check()
        return state if state and state["last_check_at"] > first["last_check_at"] else None

    await until(later_check, "the next check")  # the checker survived and runs on its interval
    await proc.wait_healthy(env["MODELFLEET_NATS_URL"], 10)
    assert not updates(bus)


async def test_skip_model_downloads_makes_no_registry_request(
    bus, peers, service_env, database_url, tmp_path, start_service
):
    ollama, hub = peers
    ollama.install("qwen3:8b")
    ollama.publish_update("qwen3:8b")  # upstream is newer than what the host holds
    env = provisioner_env(service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url},
                          MODELFLEET_PROVISIONER_UPDATE_INTERVAL_S="1", SKIP_MODEL_DOWNLOADS="1",
                          MODELFLEET_PROVISIONER_OLLAMA_REGISTRY=ollama.url)  # fmt: skip
    await start_service("provisioner", env)
    [action] = (await bus.completed((await bus.provision(models=["qwen3:8b"])).request_id)).actions
    assert action.action == "present"  # adopted into the inventory
    adopted = time.time()

    async def check_after_adopt() -> dict[str, Any] | None:
        state = await check_state(database_url)
        return state if state and state["last_check_at"] > adopted else None

    state = await until(check_after_adopt, "a check after the model was adopted")
    assert state["skipped"] is True and state["checked"] == 0
    assert not ollama.registry_requests and not updates(bus)
    [forced] = (await bus.completed((await bus.provision(models=["qwen3:8b"], force=True)).request_id)).actions
    assert forced.action == "present" and ollama.calls["POST /api/pull"] == 0

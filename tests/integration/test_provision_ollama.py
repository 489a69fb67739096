"""The provisioner process against real NATS + PostgreSQL and the Ollama peer, driven by the real `ollama` client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from itertools import pairwise

import pytest

from contracts.catalog import RoleEntry
from contracts.provisioner import InventoryReply, InventoryRequest
from tests.harness.provision_bus import provisioner_env
from tests.peers.hub_server import HubPeer
from tests.peers.ollama_server import OllamaPeer, library_model

pytestmark = pytest.mark.integration


@pytest.fixture
def peers() -> AsyncIterator[tuple[OllamaPeer, HubPeer]]:
    library = [library_model("qwen3:8b", 8 << 20), library_model("broken:1b"), library_model("hf.co/u/r-GGUF:Q4_K_M")]
    with OllamaPeer(library=library) as ollama, HubPeer() as hub:
        yield ollama, hub


async def test_pull_progress_in_order_then_pulled_inventory_and_cache(
    bus, peers, service_env, database_url, tmp_path, start_service
):
    ollama, hub = peers
    ollama.pull_step_s = 0.15  # 16 steps: ~2.4 s, so the 2-per-second cap is visible
    await start_service(
        "provisioner", provisioner_env(service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url})
    )

    cmd = await bus.provision(models=["qwen3:8b"])
    done = await bus.completed(cmd.request_id)
    assert [(a.model, a.target_host, a.action) for a in done.actions] == [("qwen3:8b", "gpu-1", "pulled")]

    progress = [e for e in bus.of(cmd.request_id, ".progress.v1") if e["model"] == "qwen3:8b"]
    assert len(progress) >= 3
    done_bytes = [e["completed_bytes"] for e in progress]
    assert done_bytes == sorted(done_bytes)
    assert done_bytes[-1] == progress[-1]["total_bytes"] == (8 << 20) + 485
    times = [datetime.fromisoformat(e["occurred_at"]) for e in progress]
    gaps = [(b - a).total_seconds() for a, b in pairwise(times)]
    assert min(gaps) >= 0.45, gaps  # at most 2 per second
    assert any(e["rate_bytes_per_s"] and e["eta_s"] is not None for e in progress)
    pulled = bus.of(cmd.request_id, ".model.pulled.v1")
    assert [p["model"] for p in pulled] == ["qwen3:8b"]
    subjects = [s for s, e, _ in bus.events if e.get("request_id") == str(cmd.request_id)]
    assert subjects.index("evt.provisioner.model.pulled.v1") > max(
        i for i, s in enumerate(subjects) if s.endswith("progress.v1")
    )
    assert ollama.calls["POST /api/pull"] == 1

    inv = InventoryReply.model_validate(await bus.request(InventoryRequest.SUBJECT, InventoryRequest(host="gpu-1")))
    [row] = inv.entries
    assert (row.model_id, row.ollama_name, row.source, row.size_bytes) == (
        "qwen3:8b",
        "qwen3:8b",
        "curated",
        (8 << 20) + 485,
    )
    assert row.context_window == 4096 and row.parameter_count == 1_000_000_000

    again = await bus.completed((await bus.provision(models=["qwen3:8b"])).request_id)
    assert [a.action for a in again.actions] == ["present"]
    forced = await bus.completed((await bus.provision(models=["qwen3:8b"], force=True)).request_id)
    assert [a.action for a in forced.actions] == ["present"]
    assert ollama.calls["POST /api/pull"] == 1


async def test_failures_on_both_error_channels_and_unreachable_ollama(
    bus, peers, service_env, database_url, tmp_path, start_service
):
    ollama, hub = peers
    ollama.fail_pull_after = 0.5
    hosts = {"gpu-1": ollama.url, "dead": "http://127.0.0.1:9"}
    proc = await start_service("provisioner", provisioner_env(service_env, database_url, tmp_path, hub.url, hosts))

    cmd = await bus.provision(models=["broken:1b", "no-such-model:7b"], hosts=["gpu-1", "dead"])
    done = await bus.completed(cmd.request_id)
    by = {(a.model, a.target_host): a for a in done.actions}
    assert {a.action for a in done.actions} == {"failed"}
    assert "unexpected EOF" in by[("broken:1b", "gpu-1")].reason
    assert "file does not exist" in by[("no-such-model:7b", "gpu-1")].reason
    assert "unreachable" in by[("broken:1b", "dead")].reason
    failed = {(f["model"], f["target_host"]): f for f in bus.of(cmd.request_id, ".failed.v1")}
    assert (failed[("broken:1b", "gpu-1")]["error_channel"], failed[("broken:1b", "gpu-1")]["status_code"]) == (
        "stream",
        -1,
    )
    assert (
        failed[("no-such-model:7b", "gpu-1")]["error_channel"],
        failed[("no-such-model:7b", "gpu-1")]["status_code"],
    ) == ("http", 500)
    assert failed[("broken:1b", "dead")]["error_channel"] == "connection"
    assert "broken:1b:latest" not in ollama.installed and "broken:1b" not in ollama.installed
    await proc.wait_healthy(service_env()["MODELFLEET_NATS_URL"], 10)


async def test_concurrent_identical_requests_share_one_pull(
    bus, peers, service_env, database_url, tmp_path, start_service
):
    ollama, hub = peers
    ollama.pull_step_s = 0.1
    await start_service(
        "provisioner", provisioner_env(service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url})
    )
    cmds = [await bus.provision(models=["qwen3:8b"]) for _ in range(3)]
    results = [await bus.completed(c.request_id) for c in cmds]
    assert [[a.action for a in r.actions] for r in results] == [["pulled"]] * 3
    assert ollama.calls["POST /api/pull"] == 1


async def test_roles_resolved_through_the_catalog_and_skips(
    bus, peers, service_env, database_url, tmp_path, start_service
):
    ollama, hub = peers
    ollama.install("present-model:1b")
    await bus.serve_catalog([
        RoleEntry(role="general", model_ref="qwen3:8b", provider="ollama"),
        RoleEntry(role="coding", model_ref="coder:7b", provider="ollama", auto_download=False),
        RoleEntry(role="chat", model_ref="present-model:1b", provider="ollama"),
        RoleEntry(role="remote", model_ref="gpt-4o", provider="openai"),
    ])  # fmt: skip
    await bus.put_host("gpu-kv", ollama.url, reachable=True)
    await bus.put_host("gpu-down", "http://127.0.0.1:9", reachable=False)
    await start_service("provisioner", provisioner_env(service_env, database_url, tmp_path, hub.url, {}))

    done = await bus.completed((await bus.provision()).request_id)
    by = {a.role: a for a in done.actions}
    assert {a.target_host for a in done.actions} == {"gpu-kv"}  # only hosts whose probe reports a reachable Ollama
    assert (by["general"].action, by["coding"].action, by["chat"].action, by["remote"].action) == (
        "pulled", "skipped", "present", "skipped",
    )  # fmt: skip
    assert "auto_download" in by["coding"].reason and "openai" in by["remote"].reason

    some = await bus.completed((await bus.provision(roles=["general", "nope"])).request_id)
    assert sorted((a.role, a.action) for a in some.actions) == [("general", "present"), ("nope", "failed")]


async def test_catalog_down_fails_roles_but_explicit_models_still_work(
    bus, peers, service_env, database_url, tmp_path, start_service
):
    ollama, hub = peers
    await start_service(
        "provisioner", provisioner_env(service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url})
    )
    models = ["qwen3:8b", "hf.co/u/r-GGUF:Q4_K_M"]
    done = await bus.completed((await bus.provision(roles=["general"], models=models)).request_id)
    by = {(a.role, a.model): a for a in done.actions}
    assert by[("general", "*")].action == "failed" and "catalog" in by[("general", "*")].reason
    assert by[(None, "qwen3:8b")].action == "pulled"
    assert by[(None, "hf.co/u/r-GGUF:Q4_K_M")].action == "pulled"  # hf.co names pass through to Ollama's pull
    assert "hf.co/u/r-GGUF:Q4_K_M" in ollama.installed and not hub.requests
    inv = InventoryReply.model_validate(await bus.request(InventoryRequest.SUBJECT, InventoryRequest()))
    assert {e.model_id: e.source for e in inv.entries} == {"qwen3:8b": "curated", "hf.co/u/r-GGUF:Q4_K_M": "custom_hf"}


async def test_skip_model_downloads_honoured(bus, peers, service_env, database_url, tmp_path, start_service):
    ollama, hub = peers
    ollama.install("here:1b")
    env = provisioner_env(service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url}, SKIP_MODEL_DOWNLOADS="1")
    await start_service("provisioner", env)
    done = await bus.completed((await bus.provision(models=["qwen3:8b", "here:1b", "hf.co/u/r:Q4_K_M@v1"])).request_id)
    by = {a.model: a for a in done.actions}
    assert (by["qwen3:8b"].action, by["here:1b"].action, by["hf.co/u/r:Q4_K_M@v1"].action) == (
        "skipped",
        "present",
        "skipped",
    )
    assert "SKIP_MODEL_DOWNLOADS" in by["qwen3:8b"].reason
    assert ollama.calls["POST /api/pull"] == 0 and not hub.requests


async def test_no_known_host_and_unknown_hosts_are_failed_actions(
    bus, peers, service_env, database_url, tmp_path, start_service
):
    _, hub = peers
    await start_service("provisioner", provisioner_env(service_env, database_url, tmp_path, hub.url, {}))
    [none] = (await bus.completed((await bus.provision(models=["qwen3:8b"])).request_id)).actions
    assert (none.action, none.target_host) == ("failed", "*") and "no host with a reachable Ollama" in none.reason
    [unknown] = (await bus.completed((await bus.provision(models=["qwen3:8b"], hosts=["ghost"])).request_id)).actions
    assert (unknown.action, unknown.target_host) == ("failed", "ghost") and "unknown" in unknown.reason

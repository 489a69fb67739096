"""Pinned, verified HF imports: the provisioner process against the hub and Ollama peers, real clients throughout."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from contracts.provisioner import (
    InventoryReply,
    InventoryRequest,
    QuantizationsReply,
    QuantizationsRequest,
    pinned_ollama_name,
)
from tests.harness.provision_bus import MIB, db_rows, provisioner_env, wait_for
from tests.peers.hub_server import HubPeer, generated_file, small_file
from tests.peers.ollama_server import OllamaPeer

pytestmark = pytest.mark.integration

REPO = "acme/tiny-GGUF"


@pytest.fixture
def peers():
    with OllamaPeer() as ollama, HubPeer() as hub:
        repo = hub.repo(REPO)
        first = repo.commit([small_file("README.md", b"# tiny"), generated_file("tiny.Q4_K_M.gguf", 6 * MIB, seed=1),
                             generated_file("tiny.Q8_0.gguf", 9 * MIB, seed=2)])  # fmt: skip
        repo.tag("v1", first)
        repo.commit([generated_file("tiny.Q4_K_M.gguf", 6 * MIB, seed=3)])  # main moves on
        yield ollama, hub, first


def sha_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_pinned_import_end_to_end_blob_equals_hub(bus, peers, service_env, database_url, tmp_path, start_service):
    ollama, hub, first = peers
    await bus.put_host("gpu-1", ollama.url, vram_gib=8)
    await start_service("provisioner", provisioner_env(service_env, database_url, tmp_path, hub.url, {}))
    hub_sha = hub.repos[REPO].commits[first]["tiny.Q4_K_M.gguf"].sha256

    quants = QuantizationsReply.model_validate(
        await bus.request(QuantizationsRequest.SUBJECT, QuantizationsRequest(repo_id=REPO, revision="v1"))
    )
    assert quants.commit == first
    assert [(q.quantization, q.size_bytes, q.sha256, q.fit["gpu-1"]) for q in quants.quantizations] == [
        ("Q4_K_M", 6 * MIB, hub_sha, "perfect"),
        ("Q8_0", 9 * MIB, hub.repos[REPO].commits[first]["tiny.Q8_0.gguf"].sha256, "perfect"),
    ]

    ref = f"hf.co/{REPO}:Q4_K_M@v1"
    cmd = await bus.provision(models=[ref], requested_by="alice")
    done = await bus.completed(cmd.request_id)
    [action] = done.actions
    name = pinned_ollama_name(REPO, "Q4_K_M", "v1")
    assert (action.action, action.sha256, action.revision, action.ollama_name) == ("imported", hub_sha, first, name)
    assert ollama.blobs[f"sha256:{hub_sha}"] == 6 * MIB  # the blob Ollama holds is the hub's file, byte for byte
    assert ollama.installed[name].files == {"tiny.Q4_K_M.gguf": f"sha256:{hub_sha}"}
    on_disk = tmp_path / "models" / REPO / first / "tiny.Q4_K_M.gguf"
    assert sha_of(on_disk) == hub_sha
    assert any("Range" not in str(r) for r in hub.requests)
    assert "hf_test_secret_token" not in (tmp_path / "logs" / "provisioner-0.log").read_text()

    inv = InventoryReply.model_validate(await bus.request(InventoryRequest.SUBJECT, InventoryRequest(host="gpu-1")))
    [row] = inv.entries
    assert (row.source, row.repo_id, row.file_name, row.quantization, row.sha256, row.revision, row.ollama_name) == (
        "pinned_hf",
        REPO,
        "tiny.Q4_K_M.gguf",
        "Q4_K_M",
        hub_sha,
        first,
        name,
    )
    assert (row.parameter_count, row.context_window) == (1_000_000_000, 4096)  # from Ollama's /api/show
    progress = [e for e in bus.of(cmd.request_id, ".progress.v1") if e["model"] == ref]
    assert progress and progress[-1]["completed_bytes"] == progress[-1]["total_bytes"] == 6 * MIB
    assert [e["completed_bytes"] for e in progress] == sorted(e["completed_bytes"] for e in progress)
    again = await bus.completed((await bus.provision(models=[ref])).request_id)
    assert [a.action for a in again.actions] == ["present"]
    forced = await bus.completed((await bus.provision(models=[ref], force=True)).request_id)
    assert [a.action for a in forced.actions] == ["imported"]  # re-verified and re-registered


async def test_corrupted_body_is_quarantined_and_nothing_registered(
    bus, peers, service_env, database_url, tmp_path, start_service
):
    ollama, hub, first = peers
    hub.corrupt = True
    await start_service(
        "provisioner", provisioner_env(service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url})
    )
    cmd = await bus.provision(models=[f"hf.co/{REPO}:Q4_K_M@{first}"])
    [action] = (await bus.completed(cmd.request_id)).actions
    assert action.action == "failed" and "sha256 mismatch" in action.reason
    [failed] = bus.of(cmd.request_id, ".failed.v1")
    assert failed["error_channel"] == "verify"
    quarantined = list((tmp_path / "quarantine").iterdir())
    assert len(quarantined) == 1 and quarantined[0].stat().st_size == 6 * MIB
    assert sha_of(quarantined[0]) != hub.repos[REPO].commits[first]["tiny.Q4_K_M.gguf"].sha256
    assert not ollama.blobs and not ollama.installed and ollama.calls["POST /api/create"] == 0
    assert not list((tmp_path / "models").rglob("*.gguf"))


async def test_unpinned_revision_refused_unless_allowed(bus, peers, service_env, database_url, tmp_path, start_service):
    ollama, hub, _ = peers
    await start_service(
        "provisioner", provisioner_env(service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url})
    )
    ref = f"hf.co/{REPO}:Q4_K_M@main"
    [refused] = (await bus.completed((await bus.provision(models=[ref])).request_id)).actions
    assert refused.action == "failed" and "is a branch" in refused.reason
    assert not ollama.installed
    [allowed] = (await bus.completed((await bus.provision(models=[ref], allow_unpinned=True)).request_id)).actions
    assert allowed.action == "imported" and allowed.revision == hub.repos[REPO].branches["main"]


async def test_file_name_climbing_out_of_models_dir_refused(
    bus, peers, service_env, database_url, tmp_path, start_service
):
    ollama, hub, _ = peers
    evil = hub.repo("evil/escape-GGUF")
    sha = evil.commit([small_file("../../x.Q4_K_M.gguf", b"GGUF" + b"\0" * 60)])
    await start_service(
        "provisioner", provisioner_env(service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url})
    )
    [action] = (
        await bus.completed((await bus.provision(models=[f"hf.co/evil/escape-GGUF:Q4_K_M@{sha}"])).request_id)
    ).actions
    assert action.action == "failed" and "climbs out of the models directory" in action.reason
    assert not list(tmp_path.rglob("x.Q4_K_M.gguf")) and not ollama.installed
    assert not [r for r in hub.requests if "/blobs/" in r[1]]  # refused before a byte was fetched


async def test_update_check_publishes_update_available_and_persists_its_time(
    bus, peers, service_env, database_url, tmp_path, start_service
):
    ollama, hub, first = peers
    env = provisioner_env(service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url},
                          MODELFLEET_PROVISIONER_UPDATE_INTERVAL_S="1")  # fmt: skip
    await start_service("provisioner", env)
    [action] = (await bus.completed((await bus.provision(models=[f"hf.co/{REPO}:Q4_K_M@v1"])).request_id)).actions
    assert action.action == "imported"
    await wait_for(lambda: any(s.endswith("update.available.v1") for s, _, _ in bus.events), what="update.available")
    [update] = [e for s, e, _ in bus.events if s.endswith("update.available.v1")][:1]
    assert (update["model"], update["installed_revision"], update["remote_revision"], update["target_host"]) == (
        f"hf.co/{REPO}:Q4_K_M@v1",
        first,
        hub.repos[REPO].branches["main"],
        "gpu-1",
    )
    [state] = await db_rows(database_url, "SELECT value FROM provisioner.state WHERE key = 'update_check'")
    value = json.loads(state["value"]) if isinstance(state["value"], str) else state["value"]
    assert value["last_check_at"] > 0 and value["skipped"] is False


async def test_update_check_honours_skip_model_downloads(
    bus, peers, service_env, database_url, tmp_path, start_service
):
    ollama, hub, _ = peers
    env = provisioner_env(service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url},
                          MODELFLEET_PROVISIONER_UPDATE_INTERVAL_S="1", SKIP_MODEL_DOWNLOADS="1")  # fmt: skip
    await start_service("provisioner", env)

    async def state() -> list[dict]:
        return await db_rows(database_url, "SELECT value FROM provisioner.state WHERE key = 'update_check'")

    for _ in range(100):
        if rows := await state():
            break
        await asyncio.sleep(0.1)
    value = json.loads(rows[0]["value"]) if isinstance(rows[0]["value"], str) else rows[0]["value"]
    assert value["skipped"] is True
    assert not hub.requests and not any(s.endswith("update.available.v1") for s, _, _ in bus.events)


async def test_pinned_safetensors_checkpoint_for_the_fallback(
    bus, peers, service_env, database_url, tmp_path, start_service
):
    ollama, hub, _ = peers
    ckpt = hub.repo("acme/tiny-llama")
    weights = b"\x07" * 8192
    commit = ckpt.commit([small_file("config.json", b'{"hidden_size": 64}'), small_file("model.safetensors", weights)])
    ckpt.tag("v2", commit)
    await start_service(
        "provisioner", provisioner_env(service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url})
    )
    [action] = (await bus.completed((await bus.provision(models=["acme/tiny-llama@v2"])).request_id)).actions
    assert (action.action, action.target_host, action.revision) == ("imported", "test-host", commit)
    folder = tmp_path / "models" / "acme/tiny-llama" / commit
    assert sha_of(folder / "model.safetensors") == hashlib.sha256(weights).hexdigest()
    assert not ollama.installed  # a checkpoint is for the PyTorch fallback, not Ollama
    inv = InventoryReply.model_validate(await bus.request(InventoryRequest.SUBJECT, InventoryRequest(host="test-host")))
    [row] = inv.entries
    assert (row.model_id, row.source, row.revision, row.tags) == (
        "acme/tiny-llama@v2",
        "pinned_hf",
        commit,
        ["safetensors", "pytorch-fallback"],
    )

"""Chaos: a download finishes while PostgreSQL is away, then the provisioner is killed before the command's
redelivery (issue 11, "no message silently lost"). The outcome could not be written (no inventory row, no audit,
no model.pulled) and the process that knew of it is gone: the redelivery, to a fresh provisioner, finds the model on
the host with no inventory row and records it as the pull (or import) it was: one `request.completed` with the
download's action, one `model.pulled`, one inventory row, one audit entry; a later request sees a plain `present`.

Every kind of download: an Ollama pull, a pinned GGUF import (hub file, then Ollama create), a pinned safetensors
checkpoint (for the fallback).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from contracts.provisioner import ProvisionCompleted, pinned_ollama_name
from services.provisioner.store import SCHEMA
from services.runtime.embedded import EmbeddedPostgres, free_port
from tests.harness.provision_bus import MIB, Bus, db_rows, provisioner_env, wait_for
from tests.peers.hub_server import HubPeer, generated_file, small_file
from tests.peers.ollama_server import OllamaPeer, library_model

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]

PULLED = ".model.pulled.v1"
COMPLETED = ".request.completed.v1"
REPO = "acme/outage-GGUF"
CHECKPOINT = "acme/outage-llama"


def distinct(bus: Bus, request_id: Any, suffix: str) -> list[dict[str, Any]]:
    """The events of one request on `suffix`, one per event_id (a re-publish of one event is not a second fact)."""
    return list({e["event_id"]: e for e in bus.of(request_id, suffix)}.values())


async def outcome_in_outage_then_restart(
    bus: Bus, start_service: Any, env: dict[str, str], pg: EmbeddedPostgres, models: list[str],
    under_way: Callable[[], bool], release: Callable[[], None],
) -> ProvisionCompleted:  # fmt: skip
    """Provision `models`; once the download is `under_way` (held at the peer), stop PostgreSQL and `release` it; once
    the request has failed for want of the database, SIGKILL the provisioner, start PostgreSQL, start a new one and
    wait for the redelivered request's completion."""
    first = await start_service("provisioner", env)
    cmd = await bus.provision(models=models)
    await wait_for(under_way, 60, "the download under way")
    pg.stop()
    release()
    await wait_for(lambda: "will be redelivered" in first.log_path.read_text(errors="replace"), 90,
                   "the request failing with the outcome unrecorded (PostgreSQL away)")  # fmt: skip
    first.kill()  # what it knew of the outcome dies with it
    pg.start()
    await start_service("provisioner", env)
    done = await bus.completed(cmd.request_id, timeout_s=150)
    assert len(distinct(bus, cmd.request_id, COMPLETED)) == 1
    return done


async def test_pull_finished_in_outage_then_restart_is_recorded_as_the_pull(
    service_env, nats_url, tmp_path: Path, start_service, bus: Bus
) -> None:
    model = "outage-pull:1b"
    pg = EmbeddedPostgres(tmp_path / "pg" / "data", port=free_port(), fsync=False).start()
    peer = OllamaPeer(library=[library_model(model, MIB)])
    try:
        with peer:
            peer.pull_gate = threading.Event()
            gate = peer.pull_gate
            env = provisioner_env(service_env, pg.url, tmp_path, "http://127.0.0.1:9", {"gpu-1": peer.url},
                                  MODELFLEET_RETRY_MAX_S="0.5")  # fmt: skip
            done = await outcome_in_outage_then_restart(
                bus, start_service, env, pg, [model], lambda: model in peer.pull_requests, gate.set
            )
            assert [(a.action, a.target_host) for a in done.actions] == [("pulled", "gpu-1")], done.actions
            assert peer.pull_requests == [model]  # downloaded once: the redelivery did not pull again
            [pulled] = distinct(bus, done.request_id, PULLED)
            assert (pulled["target_host"], pulled["model"]) == ("gpu-1", model)
            rows = await db_rows(pg.url, f"SELECT host, ollama_name, size_bytes FROM {SCHEMA}.inventory")
            assert rows == [{"host": "gpu-1", "ollama_name": model, "size_bytes": peer.installed[model].size}], rows
            audit = await db_rows(pg.url, f"SELECT action, request_id FROM {SCHEMA}.audit WHERE result = 'ok'")
            assert [(a["action"], str(a["request_id"])) for a in audit] == [("pull", str(done.request_id))], audit

            # Recorded once: another request finds the row, a plain `present`, no second model.pulled.
            again = await bus.completed((await bus.provision(models=[model], hosts=["gpu-1"])).request_id)
            assert [a.action for a in again.actions] == ["present"]
            assert not distinct(bus, again.request_id, PULLED)
            assert len(await db_rows(pg.url, f"SELECT id FROM {SCHEMA}.inventory")) == 1
    finally:
        if peer.pull_gate is not None:
            peer.pull_gate.set()
        pg.stop()


@pytest.fixture
def hub_peer():
    with HubPeer() as hub:
        repo = hub.repo(REPO)
        first = repo.commit([small_file("README.md", b"# outage"), generated_file("tiny.Q4_K_M.gguf", 4 * MIB)])
        repo.tag("v1", first)
        ckpt = hub.repo(CHECKPOINT)
        weights = generated_file("model.safetensors", 3 * MIB, seed=5)
        ckpt.tag("v2", ckpt.commit([small_file("config.json", b'{"hidden_size": 64}'), weights]))
        yield hub


async def test_pinned_import_finished_in_outage_then_restart_is_recorded_as_the_import(
    service_env, nats_url, tmp_path: Path, start_service, bus: Bus, hub_peer: HubPeer
) -> None:
    ref = f"hf.co/{REPO}:Q4_K_M@v1"
    name = pinned_ollama_name(REPO, "Q4_K_M", "v1")
    commit = hub_peer.repos[REPO].resolve("v1")
    sha = hub_peer.repos[REPO].commits[commit or ""]["tiny.Q4_K_M.gguf"].sha256
    pg = EmbeddedPostgres(tmp_path / "pg" / "data", port=free_port(), fsync=False).start()
    try:
        with OllamaPeer() as ollama:
            hub_peer.stall_after = MIB  # the file's body holds after 1 MiB until released
            env = provisioner_env(service_env, pg.url, tmp_path, hub_peer.url, {"gpu-1": ollama.url},
                                  MODELFLEET_RETRY_MAX_S="0.5")  # fmt: skip
            done = await outcome_in_outage_then_restart(
                bus, start_service, env, pg, [ref], hub_peer.stalled.is_set, hub_peer.release
            )
            assert [(a.action, a.ollama_name, a.sha256, a.revision) for a in done.actions] == [
                ("imported", name, sha, commit)
            ], done.actions
            assert name in ollama.installed
            assert hub_peer.served[sha] == 4 * MIB  # fetched once: the redelivery used the verified file on disk
            [pulled] = distinct(bus, done.request_id, PULLED)
            assert (pulled["model"], pulled["sha256"], pulled["revision"]) == (name, sha, commit)
            rows = await db_rows(pg.url, f"SELECT host, model_id, sha256, revision FROM {SCHEMA}.inventory")
            assert rows == [{"host": "gpu-1", "model_id": ref, "sha256": sha, "revision": commit}], rows
            audit = await db_rows(pg.url, f"SELECT action FROM {SCHEMA}.audit WHERE result = 'ok'")
            assert [a["action"] for a in audit] == ["import"], audit

            again = await bus.completed((await bus.provision(models=[ref], hosts=["gpu-1"])).request_id)
            assert [a.action for a in again.actions] == ["present"]
            assert not distinct(bus, again.request_id, PULLED)
    finally:
        hub_peer.release()
        pg.stop()


async def test_checkpoint_finished_in_outage_then_restart_is_recorded_as_the_download(
    service_env, nats_url, tmp_path: Path, start_service, bus: Bus, hub_peer: HubPeer
) -> None:
    ref = f"{CHECKPOINT}@v2"
    commit = hub_peer.repos[CHECKPOINT].resolve("v2")
    pg = EmbeddedPostgres(tmp_path / "pg" / "data", port=free_port(), fsync=False).start()
    try:
        hub_peer.stall_after = MIB
        env = provisioner_env(service_env, pg.url, tmp_path, hub_peer.url, {}, MODELFLEET_RETRY_MAX_S="0.5")
        done = await outcome_in_outage_then_restart(
            bus, start_service, env, pg, [ref], hub_peer.stalled.is_set, hub_peer.release
        )
        assert [(a.action, a.target_host, a.revision) for a in done.actions] == [("imported", "test-host", commit)]
        [pulled] = distinct(bus, done.request_id, PULLED)
        assert (pulled["model"], pulled["revision"]) == (ref, commit)
        rows = await db_rows(pg.url, f"SELECT host, model_id, revision FROM {SCHEMA}.inventory")
        assert rows == [{"host": "test-host", "model_id": ref, "revision": commit}], rows
        audit = await db_rows(pg.url, f"SELECT action FROM {SCHEMA}.audit WHERE result = 'ok'")
        assert [a["action"] for a in audit] == ["download"], audit

        again = await bus.completed((await bus.provision(models=[ref])).request_id)
        assert [a.action for a in again.actions] == ["present"]
        assert not distinct(bus, again.request_id, PULLED)
    finally:
        hub_peer.release()
        pg.stop()

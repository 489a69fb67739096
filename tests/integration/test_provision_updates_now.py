"""Update check on request and its status, over the bus, through the real provisioner process and the Ollama peer:
`rpc.provisioner.updates.check.v1` runs a check now (concurrent requests share one), `...status.v1` answers the
last check's summary and when the next is due."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import pytest

from contracts.provisioner import UpdateCheckRequest, UpdateCheckSummary, UpdateStatusReply, UpdateStatusRequest
from tests.harness.provision_bus import Bus, provisioner_env
from tests.peers.hub_server import HubPeer
from tests.peers.ollama_server import OllamaPeer, library_model

pytestmark = pytest.mark.integration

QWEN_MANIFEST = "/v2/library/qwen3/manifests/8b"


async def status(bus: Bus) -> UpdateStatusReply:
    return UpdateStatusReply.model_validate(await bus.request(UpdateStatusRequest.SUBJECT, UpdateStatusRequest()))


async def check(bus: Bus, who: str) -> UpdateCheckSummary:
    reply = await bus.request(UpdateCheckRequest.SUBJECT, UpdateCheckRequest(requested_by=who), timeout_s=30)
    return UpdateCheckSummary.model_validate(reply)


async def first_status(bus: Bus, timeout_s: float = 20.0) -> UpdateStatusReply:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = await status(bus)
        if reply.last is not None:
            return reply
        await asyncio.sleep(0.1)
    raise AssertionError(f"no update check recorded after {timeout_s}s")


async def test_check_now_finds_the_update_shares_one_check_and_status_reports_it(
    bus, service_env, database_url, tmp_path, start_service
):
    library = [library_model("qwen3:8b", 1 << 20), library_model("acme/coder:1b")]
    with OllamaPeer(library=library) as ollama, HubPeer() as hub:
        ollama.install("local-only:1b")  # created on the host: no registry has it
        registry = {"MODELFLEET_PROVISIONER_OLLAMA_REGISTRY": ollama.url}  # the interval: daily (the default)
        env = provisioner_env(service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url}, **registry)
        await start_service("provisioner", env)
        startup = await first_status(bus)  # never checked: due at once, on an empty inventory
        assert startup.interval_enabled and startup.interval_s == 86400 and startup.last is not None
        assert startup.last.checked == 0 and startup.last.found == [] and not startup.last.skipped
        assert startup.next_due_at is not None
        assert (startup.next_due_at - startup.last.checked_at).total_seconds() == pytest.approx(86400)

        done = await bus.completed(
            (await bus.provision(models=["qwen3:8b", "acme/coder:1b", "local-only:1b"])).request_id
        )
        assert [a.action for a in done.actions] == ["pulled", "pulled", "present"]
        old = ollama.installed["qwen3:8b"].digest
        new = ollama.publish_update("qwen3:8b")
        ollama.registry_delay_s = 0.5  # the check is still running when the second request arrives
        seen = ollama.calls[f"GET {QWEN_MANIFEST}"]
        checks = asyncio.gather(check(bus, "alice"), check(bus, "bob"))
        during = await status(bus)
        while not during.running and not checks.done():
            during = await status(bus)
        assert during.running and during.last == startup.last  # status answers at once while a check runs
        one, two = await checks

        assert one == two and ollama.calls[f"GET {QWEN_MANIFEST}"] == seen + 1  # one check, shared
        assert one.checked_at > startup.last.checked_at and one.checked == 2 and not one.skipped
        [found] = one.found
        assert (found.host, found.model, found.source, found.registry) == ("gpu-1", "qwen3:8b", "curated", ollama.url)
        assert (found.installed_digest, found.remote_digest) == (f"sha256:{old}", f"sha256:{new}")
        assert (found.installed_revision, found.remote_revision) == (f"sha256:{old}", f"sha256:{new}")
        [error] = one.errors
        assert (error.host, error.model) == ("gpu-1", "local-only:1b") and "404" in error.reason

        deadline = time.monotonic() + 10
        while not [e for s, e, _ in bus.events if s.endswith("update.available.v1")] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        events = [e for s, e, _ in bus.events if s.endswith("update.available.v1")]
        assert [(e["model"], e["remote_digest"]) for e in events] == [("qwen3:8b", f"sha256:{new}")]

        after = await status(bus)
        assert after.last == one and not after.running
        assert after.next_due_at == datetime.fromtimestamp(one.checked_at.timestamp() + 86400, one.checked_at.tzinfo)


async def test_check_now_works_with_the_interval_off_and_honours_skip_model_downloads(
    bus, service_env, database_url, tmp_path, start_service
):
    with OllamaPeer(library=[library_model("qwen3:8b")]) as ollama, HubPeer() as hub:
        ollama.install("qwen3:8b")
        ollama.publish_update("qwen3:8b")  # upstream is newer than what the host holds
        env = provisioner_env(service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url},
                              MODELFLEET_PROVISIONER_UPDATE_CHECK="false", SKIP_MODEL_DOWNLOADS="1",
                              MODELFLEET_PROVISIONER_OLLAMA_REGISTRY=ollama.url)  # fmt: skip
        await start_service("provisioner", env)
        before = await status(bus)
        assert before.last is None and not before.interval_enabled and before.next_due_at is None
        [action] = (await bus.completed((await bus.provision(models=["qwen3:8b"])).request_id)).actions
        assert action.action == "present"  # adopted into the inventory

        summary = await check(bus, "alice")
        assert summary.skipped and summary.checked == 0 and summary.found == [] and summary.errors == []
        assert not ollama.registry_requests
        after = await status(bus)
        assert after.last == summary and after.next_due_at is None

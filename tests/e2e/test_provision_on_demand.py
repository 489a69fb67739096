"""Provisioning on demand: a role whose model is nowhere installed is pulled by the real provisioner onto the host
the router picks, and the request waits for it (bounded); catalog, router, provisioner and gateway processes, the
official `openai` client, the project's Ollama peer as the host's Ollama and its registry."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats
import openai
import pytest

from contracts.provisioner import ProvisionCommand
from contracts.vram import GIB
from tests.harness.cli import ADMIN_TOKEN
from tests.harness.fleet_events import gpu_sample, publish, route
from tests.harness.provision_bus import MIB, provisioner_env
from tests.harness.waiting import eventually
from tests.peers.ollama_server import OllamaPeer, library_model

pytestmark = pytest.mark.e2e

CODER = "qwen3-coder:30b"  # the default set's `coding` model
GENERAL = "qwen3:30b-a3b"  # the default set's `general` model
EMBEDDER = "nomic-embed-text-v2-moe:latest"  # the default set's `embedding` model
HOST = "gpu-1"
ASK = [{"role": "user", "content": "hello there"}]


@pytest.fixture
async def fleet(
    nats_url, database_url, service_env, start_service, start_gateway, tmp_path
) -> AsyncIterator[dict[str, Any]]:
    """One GPU host whose Ollama (the peer) has only the embedder; its registry serves the coding and general
    models, and each pull holds before it finishes until the test opens `pull_gate`."""
    with OllamaPeer(library=[library_model(CODER, 2 * MIB), library_model(GENERAL, 2 * MIB)]) as peer:
        peer.install(EMBEDDER)
        peer.pull_gate = threading.Event()
        env = service_env(database_url=database_url, MODELFLEET_ADMIN_TOKEN=ADMIN_TOKEN)
        await start_service("catalog", env)
        await start_service("provisioner", provisioner_env(service_env, database_url, tmp_path, "http://127.0.0.1:9",
                                                           {HOST: peer.url}))  # fmt: skip
        await start_service("router", service_env())
        url = await start_gateway(env)
        nc = await nats.connect(nats_url)
        await publish(nc.jetstream(), gpu_sample(HOST, peer.url, (EMBEDDER,), size_bytes=GIB, context_length=8192))
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=ADMIN_TOKEN, max_retries=0, timeout=60)
        try:
            # the router folds the sample asynchronously: until the embedder is served (bounded)
            await eventually(lambda: client.embeddings.create(model="embedding", input="x"), 20, "the first route")
            yield {"url": url, "client": client, "nc": nc, "peer": peer}
        finally:
            peer.pull_gate.set()
            await client.close()
            await nc.close()


async def test_a_role_nowhere_installed_is_pulled_once_and_its_waiting_requests_answered(fleet):
    client: openai.AsyncOpenAI = fleet["client"]
    peer: OllamaPeer = fleet["peer"]
    commands = await fleet["nc"].subscribe(ProvisionCommand.SUBJECT)

    waiting = [asyncio.create_task(client.chat.completions.create(model="coding", messages=ASK)) for _ in range(3)]
    await eventually(lambda: asyncio.sleep(0, peer.calls["POST /api/pull"] >= 1), 30, "the provisioner's pull")
    command = ProvisionCommand.model_validate_json((await commands.next_msg(timeout=10)).data)
    assert command.models == [CODER] and command.hosts == [HOST] and "coding" in (command.requested_by or "")

    # the waits hold no one else up: another role is answered while the pull is held
    assert (await client.embeddings.create(model="embedding", input="x")).data
    assert not any(t.done() for t in waiting)

    peer.pull_gate.set()
    answers = await asyncio.wait_for(asyncio.gather(*waiting), 60)
    assert [a.choices[0].message.content for a in answers] == ["echo: hello there"] * 3
    assert peer.calls["POST /api/pull"] == 1 and CODER in peer.installed  # one pull for every waiting request
    with pytest.raises(TimeoutError):  # and one command
        await commands.next_msg(timeout=0.5)


async def test_after_the_bound_a_503_names_the_role_model_host_and_the_pull_under_way(fleet):
    client: openai.AsyncOpenAI = fleet["client"]
    nc = fleet["nc"]
    # the pull is held: a caller that waits at most half a second gets the 503, the pull goes on
    got = await route(nc, role="general", provision_wait_s=0.5)
    error = got["error"]
    assert error["status"] == 503 and error["code"] == "no_backend" and error["field"] == "role"
    for part in ("'general'", GENERAL, HOST, "provisioning it on", "under way"):
        assert part in error["detail"]
    fleet["peer"].pull_gate.set()
    done = await eventually(lambda: client.chat.completions.create(model="general", messages=ASK), 30, "general")
    assert done.choices[0].message.content == "echo: hello there"

    # a role whose entry says auto_download false is not pulled: a 503 saying so, at once
    manifest = {"profiles": {"default": {"models": {"coding": {"name": CODER, "auto_download": False}}}}}
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=fleet["url"], timeout=30) as http:
        imported = await http.post("/api/v1/catalog/import", params={"filename": "m.json"},
                                   content=json.dumps(manifest), headers=admin)  # fmt: skip
        assert imported.status_code == 200, imported.text

    async def refused() -> openai.APIStatusError | None:
        try:
            await client.chat.completions.create(model="coding", messages=ASK)
        except openai.APIStatusError as exc:
            if "auto_download is off" in exc.message:
                return exc
        return None

    off = await eventually(refused, 20, "the auto_download-off 503")
    assert off.status_code == 503 and off.body["code"] == "no_backend"  # type: ignore[index]
    assert f"{CODER} is not installed anywhere and auto_download is off" in off.message
    assert fleet["peer"].calls["POST /api/pull"] == 1  # only general's

"""The OpenAI-compatible /v1/ of the gateway, driven by the official `openai` client: catalog, router and gateway
processes, real NATS and PostgreSQL, the project's Ollama peer as the backend (and one that fails),
a real llama.cpp server."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats
import openai
import pytest

from contracts.hardware import GpuSampled
from contracts.router import BackendCallsCompleted
from contracts.vram import GIB
from tests.harness.cli import ADMIN_TOKEN
from tests.harness.fleet_events import gpu_sample, publish
from tests.peers.ollama_server import OllamaPeer

pytestmark = pytest.mark.e2e

CODER = "qwen3-coder:30b"  # the default set's `coding` model (num_ctx 65536, temperature 0.2)
GENERAL = "qwen3:30b-a3b"  # the default set's `general` model
EMBEDDER = "nomic-embed-text-v2-moe:latest"  # the default set's `embedding` model


@pytest.fixture
def peer() -> Any:
    with OllamaPeer() as p:
        for name in (CODER, GENERAL, EMBEDDER):
            p.install(name)
        yield p


@pytest.fixture
async def fleet(
    nats_url, database_url, service_env, start_service, start_gateway, peer
) -> AsyncIterator[dict[str, Any]]:
    """Catalog, router and gateway processes; `b-live` serves every model from the peer, `a-dead` advertises
    `general` from a peer whose chats fail with a 500 (and sorts first, so the route picks it)."""
    env = service_env(database_url=database_url, MODELFLEET_ADMIN_TOKEN=ADMIN_TOKEN)
    await start_service("catalog", env)
    await start_service("router", service_env())
    url = await start_gateway(env)
    nc = await nats.connect(nats_url)
    # `a-dead` passes the router's active checks (it answers /api/version) but fails every chat with a 500
    broken = OllamaPeer().start()
    broken.install(GENERAL)
    broken.chat_error = (500, "model runner crashed")
    dead = broken.url
    live = sample("b-live", peer.url, (CODER, GENERAL, EMBEDDER))
    await publish(nc.jetstream(), sample("a-dead", dead, (GENERAL,)), live)
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=ADMIN_TOKEN, max_retries=0, timeout=30)
    try:
        yield {"url": url, "client": client, "nc": nc, "dead": dead}
    finally:
        await client.close()
        await nc.close()
        broken.stop()


async def until_routed(client: openai.AsyncOpenAI, model: str, timeout_s: float = 20.0) -> Any:
    """The router folds the samples asynchronously: ask until the role has a backend (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await client.chat.completions.with_raw_response.create(  # bounded: a real model may ramble
                model=model, messages=[{"role": "user", "content": "ping"}], max_tokens=4
            )
        except openai.APIStatusError as exc:
            if exc.status_code != 503 or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def sample(host: str, url: str, loaded: tuple[str, ...]) -> GpuSampled:
    return gpu_sample(host, url, loaded, size_bytes=GIB, context_length=8192)


async def test_chat_non_streamed_and_streamed_through_the_official_client(fleet, peer):
    client: openai.AsyncOpenAI = fleet["client"]
    await until_routed(client, "coding")

    raw = await client.chat.completions.with_raw_response.create(
        model="role:coding", messages=[{"role": "user", "content": "write hello world"}], max_tokens=64, seed=7
    )
    done = raw.parse()
    assert done.choices[0].message.content == "echo: write hello world"
    assert done.model == "role:coding" and done.choices[0].finish_reason == "stop"
    assert done.usage is not None and done.usage.prompt_tokens > 0 and done.usage.completion_tokens > 0
    assert raw.headers["x-modelfleet-backend"] == f"b-live {peer.url}"
    assert raw.headers["x-modelfleet-route-reason"].startswith("loaded/least_busy")
    assert float(raw.headers["x-modelfleet-overhead-ms"]) >= 0
    options = peer.chat_requests[-1]["options"]
    # num_ctx always reaches Ollama (the role's 65536); the request's fields are the top layer of the parameters
    assert options["num_ctx"] == 65536 and options["temperature"] == 0.2
    assert options["num_predict"] == 64 and options["seed"] == 7
    assert peer.chat_requests[-1]["messages"][0]["role"] == "system"  # the role's system prompt went first

    stream = await client.chat.completions.create(
        model="coding", messages=[{"role": "user", "content": "one two three"}], stream=True,
        stream_options={"include_usage": True}, temperature=0.5,
    )  # fmt: skip
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == "echo: one two three"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert not chunks[-1].choices and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert {c.model for c in chunks} == {"coding"}
    assert peer.chat_requests[-1]["options"]["temperature"] == 0.5
    assert peer.chat_requests[-1]["options"]["num_ctx"] == 65536

    # the wire itself: server-sent events, ending in [DONE]; the headers come before the first byte
    async with httpx.AsyncClient(timeout=30) as http, http.stream(
        "POST", f"{fleet['url']}/v1/chat/completions", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        json={"model": "coding", "messages": [{"role": "user", "content": "hi"}], "stream": True},
    ) as r:  # fmt: skip
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-modelfleet-backend"] == f"b-live {peer.url}"
        lines = [line async for line in r.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    assert not any("usage" in json.loads(line[6:]) for line in lines[:-1])  # not asked for, not sent


async def test_a_failing_backend_falls_back_before_the_first_byte(fleet, peer):
    nc = fleet["nc"]
    reports = await nc.subscribe(BackendCallsCompleted.SUBJECT)
    raw = await until_routed(fleet["client"], "general")
    # `a-dead` was chosen (it sorts first among equals) and failed; the chain's next entry answered
    assert raw.headers["x-modelfleet-backend"] == f"b-live {peer.url}"
    assert "retried=1" in raw.headers["x-modelfleet-route-reason"]
    assert raw.parse().choices[0].message.content == "echo: ping"
    seen: dict[str, str] = {}
    deadline = time.monotonic() + 10
    while len(seen) < 2 and time.monotonic() < deadline:
        batch = BackendCallsCompleted.model_validate_json((await reports.next_msg(timeout=10)).data)
        for report in batch.calls:  # the failure went out at once, the success within the report window
            seen[report.host_id] = report.outcome
            assert report.gateway_instance == batch.gateway_instance
            assert report.in_flight is not None and report.latency_ms >= 0
    assert seen == {"a-dead": "error", "b-live": "ok"}


async def test_errors_are_openai_shaped(fleet):
    client: openai.AsyncOpenAI = fleet["client"]
    await until_routed(client, "coding")
    with pytest.raises(openai.APIStatusError) as nothing:  # nothing serves the `summarization` role's model
        await client.chat.completions.create(model="summarization", messages=[{"role": "user", "content": "x"}])
    assert nothing.value.status_code == 503
    error = nothing.value.body
    assert error["code"] == "no_backend" and "summarization" in error["message"] and error["type"] == "server_error"

    with pytest.raises(openai.NotFoundError) as unknown:
        await client.chat.completions.create(model="role:astrology", messages=[{"role": "user", "content": "x"}])
    assert unknown.value.body["param"] == "role" and "astrology" in unknown.value.body["message"]

    with pytest.raises(openai.UnprocessableEntityError) as bad:
        await client.chat.completions.create(model="coding", messages=[{"role": "user", "content": "x"}],
                                             temperature=7)  # fmt: skip
    assert bad.value.body["param"] == "temperature" and bad.value.body["type"] == "invalid_request_error"

    stranger = openai.AsyncOpenAI(base_url=f"{fleet['url']}/v1", api_key="not-a-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        await stranger.models.list()
    assert denied.value.body["type"] == "authentication_error"
    await stranger.close()
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{fleet['url']}/v1/models")
        assert r.status_code == 401 and set(r.json()["error"]) >= {"message", "type", "code"}
        r = await http.get(f"{fleet['url']}/v1/nowhere", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"


async def test_models_and_embeddings(fleet, peer):
    client: openai.AsyncOpenAI = fleet["client"]
    listed = [m async for m in client.models.list()]
    ids = [m.id for m in listed]
    assert ids[:5] == ["general", "coding", "summarization", "embedding", "vision"]  # roles first, then models
    assert "qwen3-30b-a3b" in ids and {m.owned_by for m in listed} == {"modelfleet"}

    await until_routed(client, "coding")
    got = await client.embeddings.create(model="embedding", input=["alpha", "beta"])  # base64 on the wire
    assert [d.index for d in got.data] == [0, 1] and len(got.data[0].embedding) == 8
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(f"{fleet['url']}/v1/embeddings", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                            json={"model": "embedding", "input": "alpha", "encoding_format": "float"})  # fmt: skip
    floats = r.json()["data"][0]["embedding"]
    assert floats == pytest.approx(list(struct.unpack("<8f", base64.b64decode(
        base64.b64encode(struct.pack("<8f", *got.data[0].embedding))))), rel=1e-6)  # fmt: skip
    assert r.headers["x-modelfleet-backend"] == f"b-live {peer.url}"


async def test_a_role_served_by_a_real_llama_cpp_server(fleet):
    """A manifest role `{"name": <id>, "provider": "openai"}` answered by llama-cpp-python's server on SmolLM2 through
    the gateway; the server sends no usage chunk, so the gateway adds it."""
    from contracts.hardware import BackendLoadedModel, BackendStatus
    from tests.harness.llama_server import llama_server

    with llama_server() as (base_url, model_id):
        manifest = {"profiles": {"default": {"models": {"coding": {"name": model_id, "provider": "openai"}}}}}
        async with httpx.AsyncClient(base_url=fleet["url"], timeout=30) as http:
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            imported = await http.post("/api/v1/catalog/import", params={"filename": "m.json"},
                                       content=json.dumps(manifest), headers=admin)  # fmt: skip
            assert imported.status_code == 200, imported.text
        served = BackendStatus(kind="openai", base_url=base_url, reachable=True,
                               loaded=[BackendLoadedModel(name=model_id)])  # fmt: skip
        # a host with no Ollama at all: only the OpenAI-compatible server it advertises
        update = {"ollama_url": None, "ollama_reachable": False, "backends": [served]}
        engine = sample("c-llama", "", ()).model_copy(update=update)
        await publish(fleet["nc"].jetstream(), engine)
        client: openai.AsyncOpenAI = fleet["client"]
        deadline = time.monotonic() + 20
        while True:
            raw = await until_routed(client, "coding")
            if raw.headers["x-modelfleet-backend"] == f"c-llama {base_url}" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert raw.headers["x-modelfleet-backend"] == f"c-llama {base_url}"
        done = await client.chat.completions.create(
            model="coding", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=8
        )
        assert done.model == "coding" and done.choices[0].message.content
        stream = await client.chat.completions.create(
            model="coding", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = [c async for c in stream]
        assert chunks[0].choices[0].delta.role == "assistant" and {c.model for c in chunks} == {"coding"}
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1

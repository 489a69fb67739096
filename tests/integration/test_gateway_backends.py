"""The gateway's OpenAI-compatible backend caller against a real engine: llama-cpp-python's server on SmolLM2."""

from __future__ import annotations

import pytest

from services.gateway import openai_wire as wire
from services.gateway.backends import BackendError, ChatCall, OpenAIBackend
from services.runtime.embedded import free_port
from tests.harness.llama_server import llama_server
from tests.harness.silent_server import silent_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def engine():
    with llama_server() as (base_url, model_id):
        yield base_url, model_id


def call(**kw) -> ChatCall:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    return ChatCall(client_model="role:chat", messages=messages, options={"num_predict": 8, "temperature": 0.0,
                    "num_ctx": 4096, "seed": 1}, **kw)  # fmt: skip


def backend_caller(read_timeout_s: float = 60) -> OpenAIBackend:
    return OpenAIBackend(connect_timeout_s=2, read_timeout_s=read_timeout_s, max_connections=8)


async def test_complete_and_stream_against_llama_cpp(engine):
    base_url, model_id = engine
    backend = backend_caller()
    try:
        done = await backend.complete(base_url, model_id, call())
        assert done["model"] == "role:chat" and done["object"] == "chat.completion"
        assert done["choices"][0]["message"]["content"] and done["usage"]["completion_tokens"] <= 8

        tally = wire.UsageTally(prompt_estimate=10)
        chunks = []
        async for item in backend.stream(base_url, model_id, call(include_usage=True)):
            tally.observe(item)
            chunks.append(item)
        assert {c["model"] for c in chunks} == {"role:chat"}
        assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert text.strip()
        assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
        final = tally.final()  # llama-cpp-python sends no usage chunk: the gateway makes one
        if final is not None:
            assert final["choices"] == [] and final["usage"]["completion_tokens"] >= 1

        # closing the stream early closes the request (the engine serves one at a time: the next call must answer)
        stream = backend.stream(base_url, model_id, call())
        await anext(stream)
        await stream.aclose()
        again = await backend.complete(base_url, model_id, call())
        assert again["choices"][0]["message"]["content"]
    finally:
        await backend.aclose()


async def test_failures_say_how_the_call_ended(engine):
    base_url, _ = engine
    backend = backend_caller(read_timeout_s=0.5)
    try:
        with pytest.raises(BackendError) as refused:
            await backend.complete(f"http://127.0.0.1:{free_port()}/v1", "x", call())
        assert refused.value.outcome == "connect_refused" and refused.value.retryable
        with pytest.raises(BackendError) as missing:
            await anext(backend.stream(f"{base_url}/nowhere", "x", call()))
        assert missing.value.status == 404 and missing.value.retryable
        with silent_server() as silent:  # takes the request and never answers: the read timeout, not a hang
            for ask in (
                lambda url: backend.complete(url, "x", call()),
                lambda url: anext(backend.stream(url, "x", call())),
            ):
                with pytest.raises(BackendError) as hung:
                    await ask(f"http://127.0.0.1:{silent.port}/v1")
                assert hung.value.outcome == "timeout" and hung.value.retryable and hung.value.status is None
            assert all(b"POST /v1/chat/completions" in got for got in silent.received())
    finally:
        await backend.aclose()

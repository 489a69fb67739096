"""A stream the backend cuts short is a failure, never a quiet end: llama-cpp-python's server (with its default
`--interrupt_requests true`) ends the stream it serves with `[DONE]` whenever another request arrives."""

from __future__ import annotations

import httpx
import pytest

from services.gateway.backends import BackendError, ChatCall, OpenAIBackend
from tests.harness.llama_server import llama_server

pytestmark = pytest.mark.integration


async def test_a_stream_interrupted_by_another_request_ends_in_an_error_not_a_quiet_done() -> None:
    with llama_server(interrupt_requests=True) as (base_url, model_id):
        messages = [{"role": "user", "content": "Write a long story about a robot who learns to paint."}]
        call = ChatCall(client_model="coding", messages=messages, options={"num_predict": 400, "temperature": 0.0})
        backend = OpenAIBackend(connect_timeout_s=2, read_timeout_s=60, max_connections=8)
        async with httpx.AsyncClient(timeout=60) as http:  # the other request's client
            stream = backend.stream(base_url, model_id, call)
            got = [await anext(stream), await anext(stream)]  # the role chunk, then generated text
            assert got[0]["choices"][0]["delta"].get("role") == "assistant"
            # any other request interrupts it: here a model listing, as the probe and the router's checks send
            assert (await http.get(f"{base_url}/models")).status_code == 200
            with pytest.raises(BackendError) as failed:
                async for item in stream:
                    got.append(item)
            assert "before any finish_reason" in str(failed.value) and failed.value.outcome == "error"
            assert not any(c["choices"][0].get("finish_reason") for c in got if c["choices"])
        await backend.aclose()

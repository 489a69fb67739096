"""The gateway's own count of open calls (exact, at once) refuses a call over a backend's `max_in_flight` before the
router's count could: the data plane driving the real `ollama` client at the project's Ollama peer, which holds a
streamed answer open."""

from __future__ import annotations

import threading

import httpx
import pytest

from contracts.router import BackendRef, RouteReply
from services.gateway.backends import ChatCall, OllamaBackend
from services.gateway.call_reports import CallReporter
from services.gateway.dataplane import DataPlane, NoBackendAnswered
from tests.peers.ollama_server import OllamaPeer

pytestmark = pytest.mark.integration

CODER = "qwen3-coder:30b"
ASK = [{"role": "user", "content": "hello there"}]


async def test_a_call_over_the_limit_is_refused_by_the_gateways_own_count_and_nothing_is_sent() -> None:
    sent: list[object] = []

    async def publish(report: object) -> None:
        sent.append(report)

    with OllamaPeer() as peer:
        peer.install(CODER)
        peer.chat_gate = threading.Event()
        ollama_backend = OllamaBackend(httpx.Timeout(30.0))
        reporter = CallReporter(publish)  # type: ignore[arg-type]
        plane = DataPlane(None, {"ollama": ollama_backend}, reporter, route_timeout_s=5)  # type: ignore[arg-type]
        backend = BackendRef(host_id="b-live", kind="ollama", base_url=peer.url, max_in_flight=1)
        reply = RouteReply(model_ref=CODER, backend=backend, model_name=CODER, role="coding", options={"num_ctx": 2048})
        try:
            opened = await plane.open_stream(reply, ChatCall("coding", ASK, reply.options))
            assert reporter.open_calls(backend) == 1 and len(peer.chat_requests) == 1

            with pytest.raises(NoBackendAnswered) as busy:
                await plane.complete(reply, ChatCall("coding", ASK, reply.options))
            assert busy.value.status == 429 and busy.value.retry_after == "1"
            assert "1 calls in flight from this gateway" in str(busy.value)
            assert len(peer.chat_requests) == 1  # nothing sent

            peer.chat_gate.set()
            rest = [chunk async for chunk in opened.rest]
            assert rest and reporter.open_calls(backend) == 0
            done = await plane.complete(reply, ChatCall("coding", ASK, reply.options))
            assert done.value["choices"][0]["message"]["content"] == "echo: hello there"
        finally:
            peer.chat_gate.set()
            await reporter.aclose()
            await ollama_backend.aclose()

"""The inference-fallback process's `/metrics`: two slots of the tiny random Llama loaded in turn under a budget with
room for one (so the first is evicted least recently used), a generation on each, scraped over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from faststream.nats import NatsBroker

from contracts.catalog import RoleEntry
from contracts.fallback import ChatMessage, FallbackSpec, GenerateEnd, GenerateRequest
from services.runtime.bus import ensure_streams
from services.runtime.rpc import Rpc
from tests.harness.metrics import free_port, scrape_async
from tests.harness.no_gpu import no_gpu_env
from tests.harness.provision_bus import Bus
from tests.harness.tiny_llama import build_tiny_llama

pytestmark = pytest.mark.integration

BUDGET = 10_000_000  # room for one tiny slot (~6.4 MB) under the 0.9 threshold, not two


async def generate(rpc: Rpc, role: str, max_tokens: int) -> GenerateEnd:
    request = GenerateRequest(
        role=role, model_ref="qwen3:8b", messages=[ChatMessage(role="user", content="Say something.")],
        max_tokens=max_tokens, options={"temperature": 0},
    )  # fmt: skip
    ends = [item async for item in rpc.stream(request, timeout_s=60) if isinstance(item, GenerateEnd)]
    assert len(ends) == 1
    return ends[0]


async def test_fallback_serves_slot_generation_and_eviction_series(
    service_env: Callable[..., dict[str, str]], start_service: Callable[..., Any], nats_url: str, tmp_path: Path
) -> None:
    coding, general = build_tiny_llama(tmp_path / "coding"), build_tiny_llama(tmp_path / "general", seed=1)
    catalog = [
        RoleEntry(role=r, model_ref="qwen3:8b", provider="ollama", fallback=FallbackSpec(path=str(p)))
        for r, p in (("coding", coding), ("general", general))
    ]
    bus = await Bus().start(nats_url)
    broker = NatsBroker(nats_url)
    try:
        await bus.serve_catalog(catalog)
        port = free_port()
        env = service_env(
            MODELFLEET_METRICS_PORT=str(port),
            MODELFLEET_FALLBACK_MEMORY_BUDGET_BYTES=str(BUDGET),
            MODELFLEET_FALLBACK_OLLAMA_MODELS=str(tmp_path / "ollama"),
            **no_gpu_env(),
        )
        await start_service("inference-fallback", env)
        await broker.connect()
        await ensure_streams(broker)
        rpc = Rpc(broker, "test-client")

        first = await generate(rpc, "coding", max_tokens=6)
        second = await generate(rpc, "general", max_tokens=4)  # no room beside coding: coding is evicted
        m = await scrape_async(f"http://127.0.0.1:{port}/metrics")
    finally:
        await broker.stop()
        await bus.close()

    assert first.completion_tokens > 0 and second.completion_tokens > 0
    assert m.value("modelfleet_fallback_slots", modelfleet_slot_state="ready") == 1
    assert m.value("modelfleet_fallback_slots", modelfleet_slot_state="loading") == 0
    assert (
        m.value("modelfleet_fallback_slot_memory_bytes", modelfleet_slot="general", modelfleet_slot_path="torch_cpu")
        > 1_000_000
    )
    assert not m.find("modelfleet_fallback_slot_memory_bytes", modelfleet_slot="coding")
    assert m.value("modelfleet_fallback_memory_budget_bytes") == BUDGET
    assert m.value("modelfleet_fallback_evictions_total", modelfleet_eviction_reason="lru") == 1
    loads = "modelfleet_fallback_slot_load_duration_seconds"
    assert m.value(f"{loads}_count", modelfleet_slot_path="torch_cpu", modelfleet_slot_load_result="loaded") == 2
    assert m.value(f"{loads}_sum") > 0

    tokens = "modelfleet_fallback_token_usage"
    assert m.value(f"{tokens}_sum", modelfleet_slot="coding", gen_ai_token_type="output") == first.completion_tokens
    assert m.value(f"{tokens}_sum", modelfleet_slot="general", gen_ai_token_type="output") == second.completion_tokens
    assert m.value(f"{tokens}_sum", modelfleet_slot="coding", gen_ai_token_type="input") == first.prompt_tokens
    rate = "modelfleet_fallback_output_tokens_per_second"
    assert m.value(f"{rate}_count") == 2 and m.value(f"{rate}_sum") > 0
    assert (
        m.value("gen_ai_server_request_duration_seconds_count", gen_ai_operation_name="chat", modelfleet_slot="coding")
        == 1
    )
    assert m.value("gen_ai_server_time_to_first_token_seconds_count", modelfleet_slot="general") == 1
    assert m.value("gen_ai_server_time_to_first_token_seconds_sum") > 0

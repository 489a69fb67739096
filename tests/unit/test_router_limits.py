"""Per-backend concurrency limits in the router's decision: backends at their limit are skipped and told apart."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contracts.hardware import GpuDevice, GpuSampled, OllamaLoadedModel
from contracts.router import BackendCallCompleted
from contracts.vram import GIB
from services.router.domain import decide, target
from services.router.fleet import Fleet, HealthRules
from services.router.strategies import LeastBusy

pytestmark = pytest.mark.unit

T0 = 1_800_000_000.0
QWEN = target("qwen3:8b", "ollama")
SMALL = target("qwen3:1.7b", "ollama")


def at(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def sample(host: str, loaded: tuple[str, ...]) -> GpuSampled:
    return GpuSampled(
        producer="hardware-probe", host=host, occurred_at=at(T0), host_id=host, has_gpu=True,
        gpus=[GpuDevice(index=0, name="gpu", uuid=f"GPU-{host}", memory_total_bytes=48 * GIB,
                        memory_free_bytes=24 * GIB, memory_used_bytes=0)],
        cpu_logical_cores=8, memory_total_bytes=64 * GIB, memory_available_bytes=32 * GIB,
        ollama_url=f"http://{host}:11434", ollama_reachable=True, interval_s=5,
        ollama_models=[OllamaLoadedModel(name=n, size_bytes=5 * GIB, context_length=8192) for n in loaded],
    )  # fmt: skip


def busy(host: str, n: int, gw: str = "gw-1", t: float = T0) -> BackendCallCompleted:
    return BackendCallCompleted(
        producer="gateway", occurred_at=at(t), host_id=host, backend_url=f"http://{host}:11434", model="qwen3:8b",
        outcome="ok", latency_ms=10, gateway_instance=gw, in_flight=n,
    )  # fmt: skip


def fleet_with(rules: HealthRules, *hosts: tuple[str, tuple[str, ...]]) -> Fleet:
    fleet = Fleet(rules)
    for host, loaded in hosts:
        fleet.observe_sample(sample(host, loaded))
    return fleet


def test_limits_come_from_the_default_then_the_host_then_the_url():
    rules = HealthRules(max_in_flight=8, limits={"b": 2, "http://c:11434": 3, "c": 5})
    fleet = fleet_with(rules, ("a", ("qwen3:8b",)), ("b", ("qwen3:8b",)), ("c", ("qwen3:8b",)))
    assert {h: next(iter(fleet.hosts[h].backends.values())).limit for h in "abc"} == {"a": 8, "b": 2, "c": 3}


def test_a_backend_at_its_limit_is_skipped_and_counted_across_gateways():
    fleet = fleet_with(HealthRules(max_in_flight=4), ("a", ("qwen3:8b",)), ("b", ("qwen3:8b",)))
    fleet.observe_call(busy("a", 2, "gw-1"))
    fleet.observe_call(busy("a", 2, "gw-2"))  # 4 in flight on `a` in all: at its limit
    got = decide(fleet, QWEN, (), LeastBusy(), T0 + 1, num_ctx=8192)
    assert [p.backend.host.host_id for p in got.picks] == ["b"]
    assert list(got.saturated) == ["a http://a:11434"]


def test_every_backend_at_its_limit_leaves_no_pick_but_says_why():
    fleet = fleet_with(HealthRules(max_in_flight=1), ("a", ("qwen3:8b",)))
    fleet.observe_call(busy("a", 1))
    got = decide(fleet, QWEN, (), LeastBusy(), T0 + 1, num_ctx=8192)
    assert got.picks == [] and list(got.saturated) == ["a http://a:11434"]
    # a fallback model's backend with room serves instead
    fleet.observe_sample(sample("b", ("qwen3:1.7b",)))
    got = decide(fleet, QWEN, (SMALL,), LeastBusy(), T0 + 1, num_ctx=8192)
    assert [(p.backend.host.host_id, p.model_ref) for p in got.picks] == [("b", "qwen3:1.7b")]


def test_the_limit_frees_up_when_calls_end_or_a_gateways_report_ages():
    fleet = fleet_with(HealthRules(max_in_flight=2, in_flight_ttl_s=30), ("a", ("qwen3:8b",)))
    fleet.observe_call(busy("a", 2, t=T0))
    assert decide(fleet, QWEN, (), LeastBusy(), T0 + 1, num_ctx=8192).picks == []
    fleet.observe_call(busy("a", 1, t=T0 + 2))  # a call ended
    assert len(decide(fleet, QWEN, (), LeastBusy(), T0 + 3, num_ctx=8192).picks) == 1
    fleet.observe_call(busy("a", 2, t=T0 + 4))
    assert decide(fleet, QWEN, (), LeastBusy(), T0 + 5, num_ctx=8192).picks == []
    # the gateway fell silent: its count no longer holds after the TTL
    assert len(decide(fleet, QWEN, (), LeastBusy(), T0 + 40, num_ctx=8192).picks) == 1

"""The router's fold and decision: tiers, strategies, circuits, fail-open, the fallback chain and num_ctx."""

from __future__ import annotations

import pytest

from contracts.hardware import (
    BackendLoadedModel,
    BackendModel,
    BackendStatus,
    GpuSampled,
    HostHeartbeat,
)
from contracts.vram import GIB
from services.router import domain
from services.router.domain import DEFAULT_NUM_CTX, decide, target
from services.router.fleet import Fleet, HealthRules
from services.router.strategies import Latency, LeastBusy, Weighted
from tests.harness.router_events import T0, at, call, pulled, sample

pytestmark = pytest.mark.unit

QWEN = target("qwen3:8b", "ollama")


def fleet_of(*hosts: str, loaded: tuple[str, ...] = ("qwen3:8b",), rules: HealthRules | None = None) -> Fleet:
    fleet = Fleet(rules)
    for h in hosts:
        fleet.observe_sample(sample(h, T0, loaded=loaded))
    return fleet


def chosen(fleet: Fleet, strategy=None, now: float = T0 + 1, fallbacks=(), **kw):
    return decide(fleet, QWEN, fallbacks, strategy or LeastBusy(), now, num_ctx=8192, **kw)


def hosts_of(decision) -> list[str]:
    return [p.backend.host.host_id for p in decision.picks]


def test_sample_derives_the_ollama_backend_and_its_loaded_models() -> None:
    fleet = fleet_of("a", loaded=("qwen3:8b", "llama3.2"))
    b = fleet.hosts["a"].backends["http://a:11434"]
    assert (b.kind, b.reachable) == ("ollama", True)
    assert set(b.loaded) == {"qwen3:8b", "llama3.2:latest"}  # Ollama's default tag, as model refs resolve
    assert b.loaded["qwen3:8b"].context_length == 8192
    assert set(fleet.loaded_by) == {("ollama", "qwen3:8b"), ("ollama", "llama3.2:latest")}
    # the next sample replaces what is loaded; an older one (a replay) changes nothing
    fleet.observe_sample(sample("a", T0 + 5, loaded=("llama3.2",)))
    fleet.observe_sample(sample("a", T0 + 2, loaded=("qwen3:8b",)))
    assert set(fleet.loaded_by) == {("ollama", "llama3.2:latest")}
    assert fleet.hosts["a"].gpus_free == [24 * GIB]


def test_pulled_models_are_installed_on_the_hosts_ollama_even_before_its_first_sample() -> None:
    fleet = Fleet()
    fleet.observe_pulled(pulled("a", "qwen3:8b"))
    fleet.observe_sample(sample("a", T0))
    assert fleet.hosts["a"].backends["http://a:11434"].installed == {"qwen3:8b": 5 * GIB}
    assert list(fleet.installed_by[("ollama", "qwen3:8b")]) == ["a http://a:11434"]


def test_tiers_loaded_then_fits_then_installed() -> None:
    fleet = Fleet()
    fleet.observe_sample(sample("small", T0, free_gib=2))  # installed, but 5 GiB will not fit in 2
    fleet.observe_sample(sample("roomy", T0, free_gib=40))  # installed and fits
    fleet.observe_sample(sample("hot", T0, loaded=("qwen3:8b",), free_gib=1))  # loaded
    for h in ("small", "roomy", "hot"):
        fleet.observe_pulled(pulled(h, "qwen3:8b"))
    d = chosen(fleet)
    assert hosts_of(d) == ["hot", "roomy", "small"]
    assert [p.tier for p in d.picks] == ["loaded", "fits", "installed"]
    assert {p.model_name for p in d.picks} == {"qwen3:8b"}


def test_fits_uses_the_requested_context() -> None:
    fleet = Fleet()
    fleet.observe_sample(sample("a", T0, free_gib=7))
    fleet.observe_pulled(pulled("a", "qwen3:8b", size_gib=5))
    assert decide(fleet, QWEN, (), LeastBusy(), T0 + 1, num_ctx=2048).picks[0].tier == "fits"
    assert decide(fleet, QWEN, (), LeastBusy(), T0 + 1, num_ctx=1_000_000).picks[0].tier == "installed"


def test_least_busy_sums_the_fresh_in_flight_reports_of_every_gateway() -> None:
    fleet = fleet_of("a", "b")
    fleet.observe_call(call("a", T0, in_flight=2, gw="gw-1"))
    fleet.observe_call(call("b", T0, in_flight=1, gw="gw-1"))
    fleet.observe_call(call("b", T0, in_flight=3, gw="gw-2"))
    assert hosts_of(chosen(fleet)) == ["a", "b"]  # a: 2, b: 1 + 3
    # an older report from a gateway does not replace a newer one
    fleet.observe_call(call("b", T0 - 5, in_flight=0, gw="gw-2"))
    assert fleet.hosts["b"].backends["http://b:11434"].busy(T0 + 1, 30) == 4
    # gw-2 stops reporting: after the TTL its count no longer holds b back
    assert hosts_of(chosen(fleet, now=T0 + 31)) == ["a", "b"]  # both 0 now: equal, by id
    assert fleet.hosts["b"].backends["http://b:11434"].busy(T0 + 31, 30) == 0


def test_equal_candidates_are_ordered_by_backend_id_on_every_replica() -> None:
    one, two = fleet_of("c", "a", "b"), fleet_of("b", "c", "a")
    assert hosts_of(chosen(one)) == hosts_of(chosen(two)) == ["a", "b", "c"]


def test_latency_prefers_the_fastest_band_then_least_busy() -> None:
    fleet = fleet_of("fast", "close", "slow")
    fleet.observe_call(call("fast", T0, ms=100, in_flight=5))
    fleet.observe_call(call("close", T0, ms=110, in_flight=1))  # within 25 % of 100: as fast, and less busy
    fleet.observe_call(call("slow", T0, ms=400, in_flight=0))
    assert hosts_of(chosen(fleet, Latency(tolerance=0.25, tolerance_ms=0))) == ["close", "fast", "slow"]
    assert hosts_of(chosen(fleet, LeastBusy())) == ["slow", "close", "fast"]
    # EWMA: one slow call moves `close` out of the band (alpha 0.3: 0.3 * 1000 + 0.7 * 110 = 377)
    fleet.observe_call(call("close", T0 + 1, ms=1000, in_flight=1))
    assert fleet.hosts["close"].backends["http://close:11434"].ewma_ms == pytest.approx(377)
    assert hosts_of(chosen(fleet, Latency(tolerance=0.25, tolerance_ms=0))) == ["fast", "close", "slow"]


def test_weighted_spreads_in_proportion_to_the_weights() -> None:
    fleet = fleet_of("big", "small")
    weighted = Weighted({"http://big:11434": 3.0, "small": 1.0})
    assert hosts_of(chosen(fleet, weighted)) == ["big", "small"]
    fleet.observe_call(call("big", T0, in_flight=2))  # (2 + 1) / 3 = 1 vs (0 + 1) / 1 = 1: the heavier wins ties
    assert hosts_of(chosen(fleet, weighted))[0] == "big"
    fleet.observe_call(call("big", T0, in_flight=3))  # 4 / 3 > 1
    assert hosts_of(chosen(fleet, weighted))[0] == "small"


def test_a_backend_is_skipped_while_its_circuit_is_open_then_half_open() -> None:
    fleet = fleet_of("a", "b", rules=HealthRules(allowed_fails=3, cooldown_s=5))
    for i in range(2):
        fleet.observe_call(call("a", T0 + i, "error", status=500))
    assert hosts_of(chosen(fleet, now=T0 + 2))[0] == "a"  # two failures: still closed
    fleet.observe_call(call("a", T0 + 2, "timeout"))
    a = fleet.hosts["a"].backends["http://a:11434"]
    assert (a.circuit(T0 + 3), a.recent_failures(T0 + 3, 60)) == ("open", 3)
    assert hosts_of(chosen(fleet, now=T0 + 3)) == ["b"]
    # after the cooldown: half-open, tried after the healthy backend
    assert a.circuit(T0 + 8) == "half_open"
    assert hosts_of(chosen(fleet, now=T0 + 8)) == ["b", "a"]
    # a success in half-open closes it; a success while open (a call from before the trip) does not
    fleet.observe_call(call("a", T0 + 9))
    assert a.circuit(T0 + 9) == "closed"


def test_refused_and_429_open_the_circuit_at_once_and_4xx_does_not_count() -> None:
    fleet = fleet_of("a", "b", "c")
    fleet.observe_call(call("a", T0, "connect_refused"))
    fleet.observe_call(call("b", T0, "rate_limited", status=429))
    for _ in range(5):
        fleet.observe_call(call("c", T0, "error", status=400))
    assert hosts_of(chosen(fleet)) == ["c"]
    fleet.observe_call(call("a", T0 + 1))  # still open at T0 + 1: ignored
    assert fleet.hosts["a"].backends["http://a:11434"].circuit(T0 + 1) == "open"


def test_failures_slide_out_of_the_window() -> None:
    fleet = fleet_of("a", rules=HealthRules(allowed_fails=3, window_s=60))
    fleet.observe_call(call("a", T0, "error"))
    fleet.observe_call(call("a", T0 + 30, "error"))
    fleet.observe_call(call("a", T0 + 70, "error"))  # the first has left the minute
    assert fleet.hosts["a"].backends["http://a:11434"].circuit(T0 + 71) == "closed"


def test_dead_hosts_are_skipped_and_a_stale_fleet_fails_open() -> None:
    fleet = fleet_of("a", "b")  # interval 5 s x 3 missed beats: alive until T0 + 15
    beat = HostHeartbeat(
        producer="hardware-probe", occurred_at=at(T0 + 10), host_id="b", interval_s=5,
        ollama_url="http://b:11434", ollama_reachable=True,
    )  # fmt: skip
    fleet.observe_heartbeat(beat)
    d = chosen(fleet, now=T0 + 20)
    assert (hosts_of(d), d.fail_open) == (["b"], False)
    d = chosen(fleet, now=T0 + 100)  # nobody heard from: the view is stale, not the fleet dead
    assert (hosts_of(d), d.fail_open) == (["a", "b"], True)


def test_unreachable_ollama_is_skipped() -> None:
    fleet = fleet_of("a", "b")
    fleet.observe_sample(sample("a", T0 + 1, reachable=False))
    assert hosts_of(chosen(fleet, now=T0 + 2)) == ["b"]


def test_fallback_chain_is_the_remaining_candidates_then_the_fallback_models() -> None:
    fleet = fleet_of("a", "b", loaded=("qwen3:8b", "llama3.2:3b"))
    fleet.observe_sample(sample("c", T0, loaded=("llama3.2:3b",)))
    d = chosen(fleet, fallbacks=[target("llama3.2:3b", None)], chain_limit=3)
    assert [(p.backend.host.host_id, p.model_name) for p in d.picks] == [
        ("a", "qwen3:8b"), ("b", "qwen3:8b"), ("a", "llama3.2:3b"), ("b", "llama3.2:3b"),
    ]  # fmt: skip
    # the model has no usable backend: its first fallback serves
    for h in ("a", "b"):
        fleet.observe_call(call(h, T0, "connect_refused"))
    d = chosen(fleet, fallbacks=[target("llama3.2:3b", None)])
    assert hosts_of(d) == ["c"] and d.picks[0].model_ref == "llama3.2:3b"
    assert "serving fallback llama3.2:3b" in domain.describe(d, "qwen3:8b")


def test_openai_models_are_found_by_the_id_their_backend_lists() -> None:
    assert target("smollm2", "openai").keys == (("openai", "smollm2"),)
    assert target("qwen3:8b", None).keys == (("ollama", "qwen3:8b"), ("openai", "qwen3:8b"))
    assert target("Qwen/Qwen3-8B@abc", "huggingface").keys == ()


def test_nothing_serves_the_model() -> None:
    assert chosen(fleet_of("a", loaded=("llama3.2",))).picks == []


def test_num_ctx_rule() -> None:
    assert domain.num_ctx({"num_ctx": 40960}, 131072) == 40960  # the resolved parameters first
    assert domain.num_ctx({}, 32768) == 32768  # then the model's trained context
    assert domain.num_ctx({}, None) == DEFAULT_NUM_CTX == 8192  # then the default
    assert domain.num_ctx({"num_ctx": 4096}, None, required_context=16384) == 16384  # raised to what is needed
    assert domain.num_ctx({"num_ctx": 4096}, None, prompt_tokens=6000) == 6000
    assert domain.num_ctx({"num_ctx": 4096}, None, required_context=1024) == 4096  # never lowered
    assert domain.options_for({"temperature": 0.2}, 8192, ollama=True) == {"temperature": 0.2, "num_ctx": 8192}
    assert domain.options_for({"temperature": 0.2}, 8192, ollama=False) == {"temperature": 0.2}


# --- the probe's advertisement (GpuSampled.backends) -----------------------------------------------------------------


def ollama_at(host: str, *, installed: tuple[str, ...] = (), loaded: tuple[str, ...] = (), reachable: bool = True):
    return BackendStatus(
        kind="ollama", base_url=f"http://{host}:11434", reachable=reachable,
        installed=[BackendModel(name=n, size_bytes=5 * GIB) for n in installed],
        loaded=[BackendLoadedModel(name=n, size_bytes=5 * GIB, size_vram_bytes=4 * GIB, context_length=8192)
                for n in loaded],
    )  # fmt: skip


def openai_at(host: str, *models: str, reachable: bool = True) -> BackendStatus:
    return BackendStatus(
        kind="openai", base_url=f"http://{host}:8080/v1/", reachable=reachable,
        installed=[BackendModel(name=m) for m in models], loaded=[BackendLoadedModel(name=m) for m in models],
    )  # fmt: skip


def advertised(host: str, t: float, *backends: BackendStatus) -> GpuSampled:
    """A sample from a probe that lists its backends (its Ollama fields say nothing here, to show they are unused)."""
    return sample(host, t).model_copy(update={"backends": list(backends), "ollama_models": []})


SMOLLM2 = target("smollm2", "openai")


def test_advertised_backends_give_installed_and_loaded_models_without_any_pull() -> None:
    fleet = Fleet()
    fleet.observe_sample(advertised("a", T0, ollama_at("a", installed=("qwen3:8b", "llama3.2"), loaded=("llama3.2",))))
    b = fleet.hosts["a"].backends["http://a:11434"]
    assert b.installed == {"qwen3:8b": 5 * GIB, "llama3.2:latest": 4 * GIB}  # /api/tags; a loaded one at its VRAM
    assert set(b.loaded) == {"llama3.2:latest"} and b.loaded["llama3.2:latest"].context_length == 8192
    d = chosen(fleet)
    assert [(p.backend.id, p.tier) for p in d.picks] == [("a http://a:11434", "fits")]


def test_an_openai_backend_serving_smollm2_makes_an_openai_model_routable() -> None:
    fleet = fleet_of("a")
    assert decide(fleet, SMOLLM2, (), LeastBusy(), T0 + 1, num_ctx=2048).picks == []
    fleet.observe_sample(advertised("a", T0 + 1, ollama_at("a"), openai_at("a", "smollm2")))
    d = decide(fleet, SMOLLM2, (), LeastBusy(), T0 + 2, num_ctx=2048)
    assert [(p.backend.kind, p.backend.base_url, p.model_name, p.tier) for p in d.picks] == [
        ("openai", "http://a:8080/v1", "smollm2", "loaded")
    ]
    assert fleet.installed_by[("openai", "smollm2")].keys() == {"a http://a:8080/v1"}
    # the id is matched as listed: an Ollama model of the same name is another model
    assert decide(fleet, target("smollm2", "ollama"), (), LeastBusy(), T0 + 2, num_ctx=2048).picks == []


def test_a_backend_missing_from_a_newer_sample_disappears() -> None:
    fleet = Fleet()
    fleet.observe_sample(advertised("a", T0, ollama_at("a"), openai_at("a", "smollm2")))
    fleet.observe_sample(advertised("a", T0 + 5, ollama_at("a")))
    assert set(fleet.hosts["a"].backends) == {"http://a:11434"}
    assert ("openai", "smollm2") not in fleet.loaded_by and ("openai", "smollm2") not in fleet.installed_by
    assert decide(fleet, SMOLLM2, (), LeastBusy(), T0 + 6, num_ctx=2048).picks == []
    fleet.observe_sample(advertised("a", T0 + 2, ollama_at("a"), openai_at("a", "smollm2")))  # a replay: ignored
    assert set(fleet.hosts["a"].backends) == {"http://a:11434"}


def test_the_installed_list_replaces_what_was_pulled_and_a_later_pull_is_still_folded() -> None:
    fleet = Fleet()
    fleet.observe_pulled(pulled("a", "old:1b"))
    fleet.observe_sample(advertised("a", T0, ollama_at("a", installed=("qwen3:8b",))))
    b = fleet.hosts["a"].backends["http://a:11434"]
    assert set(b.installed) == {"qwen3:8b"}  # old:1b is gone from /api/tags: deleted since it was pulled
    fleet.observe_pulled(pulled("a", "phi4:14b", t=T0 + 1))
    assert set(b.installed) == {"qwen3:8b", "phi4:14b"}  # known before the next sample lists it
    fleet.observe_sample(advertised("a", T0 + 5, ollama_at("a", installed=("qwen3:8b", "phi4:14b"))))
    assert set(b.installed) == {"qwen3:8b", "phi4:14b"} and ("ollama", "old:1b") not in fleet.installed_by


def test_an_unreachable_advertised_backend_keeps_its_lists_and_is_skipped() -> None:
    fleet = Fleet()
    fleet.observe_sample(advertised("a", T0, openai_at("a", "smollm2")))
    fleet.observe_sample(advertised("a", T0 + 1, openai_at("a", reachable=False)))
    b = fleet.hosts["a"].backends["http://a:8080/v1"]
    assert b.reachable is False and set(b.loaded) == {"smollm2"}
    assert decide(fleet, SMOLLM2, (), LeastBusy(), T0 + 2, num_ctx=2048).picks == []

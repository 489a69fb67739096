"""The inference fallback in-process against real NATS, real torch and transformers, on a tiny random Llama: the
streamed generate over the seam, sampling and stop strings, cancellation, degraded warming, recovered expiry, LRU
eviction, the slots scatter-gather, health and the advertisement, and LoRA adapters from the registry folder (real
peft) applied to a generation."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from faststream.nats import NatsBroker

from contracts.catalog import RoleEntry
from contracts.fallback import (
    AdapterManifest,
    AdapterUpdated,
    ChatMessage,
    FallbackAdvertised,
    FallbackSpec,
    GenerateChunk,
    GenerateEnd,
    GenerateRequest,
    SlotsReply,
    SlotsRequest,
)
from contracts.health import HealthReply, HealthRequest
from contracts.router import LlmDegraded, LlmRecovered
from contracts.rpc import RpcError
from services.inference_fallback import generate as generate_module
from services.inference_fallback.adapters import WEIGHTS_FILE, sha256_file
from services.inference_fallback.app import build_app
from services.inference_fallback.settings import InferenceFallbackSettings
from services.runtime.bus import ensure_streams, publish_event
from services.runtime.rpc import Rpc
from tests.harness.llama_server import smollm2_gguf
from tests.harness.provision_bus import Bus
from tests.harness.tiny_llama import build_tiny_llama
from tests.harness.waiting import eventually

pytestmark = pytest.mark.integration

HELLO = [ChatMessage(role="user", content="Say something.")]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


def roles(tiny: Path, **extra: FallbackSpec) -> list[RoleEntry]:
    specs = {"coding": FallbackSpec(path=str(tiny)), **extra}
    return [RoleEntry(role=r, model_ref="qwen3:8b", provider="ollama", fallback=s) for r, s in specs.items()]


class Fallback:
    """The service in this process, a catalog stand-in answering roles, a client seam and the fallback's events."""

    def __init__(self, nats_url: str, tmp_path: Path) -> None:
        self.nats_url, self.tmp_path = nats_url, tmp_path
        self.events: list[dict[str, Any]] = []
        self.stopped = False

    async def start(self, catalog: list[RoleEntry], **settings: Any) -> Fallback:
        self.bus = await Bus().start(self.nats_url)
        await self.bus.serve_catalog(catalog)
        self.nc = await nats.connect(self.nats_url)

        async def record(msg: Any) -> None:
            self.events.append({"subject": msg.subject, **json.loads(msg.data)})

        await self.nc.subscribe("evt.fallback.>", cb=record)
        base = {
            "nats_url": self.nats_url, "state_dir": self.tmp_path / "state", "host_id": "fb-host",
            "advertise_interval_s": 0.3, "expiry_check_s": 0.1, "ollama_models": self.tmp_path / "ollama",
            "allow_cuda": False,  # the tests expect the torch_cpu path, on a GPU host too
        }  # fmt: skip
        self.service = build_app(InferenceFallbackSettings(**{**base, **settings}))
        await self.service.start()
        self.broker = NatsBroker(self.nats_url)
        await self.broker.connect()
        await ensure_streams(self.broker)
        self.rpc = Rpc(self.broker, "test-client")
        return self

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        await self.service.stop()
        await self.broker.stop()
        await self.nc.close()
        await self.bus.close()

    async def generate(self, timeout_s: float = 30, **fields: Any) -> tuple[list[GenerateChunk], GenerateEnd]:
        chunks: list[GenerateChunk] = []
        end: GenerateEnd | None = None
        request = GenerateRequest(**{"model_ref": "qwen3:8b", "messages": HELLO, **fields})
        async for item in self.rpc.stream(request, timeout_s=timeout_s):
            if isinstance(item, GenerateEnd):
                end = item
            else:
                chunks.append(item)
        assert end is not None
        return chunks, end

    async def slots(self) -> SlotsReply:
        return await self.rpc.ask(SlotsRequest())

    def of(self, subject: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if e["subject"] == subject and all(e.get(k) == v for k, v in match.items())]

    async def seen(self, subject: str, within: str = "", **match: Any) -> list[dict[str, Any]]:
        """The events on `subject` matching `match` (and whose reason contains `within`), once there is one."""

        async def found() -> list[dict[str, Any]]:
            return [e for e in self.of(subject, **match) if within in e.get("reason", "")]

        return await eventually(found, timeout_s=30, what=f"{subject} {match}")


@pytest.fixture
async def fallback(nats_url: str, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[Fallback] = []

    async def start(catalog: list[RoleEntry], **settings: Any) -> Fallback:
        fb = await Fallback(nats_url, tmp_path).start(catalog, **settings)
        started.append(fb)
        return fb

    try:
        yield start
    finally:
        for fb in started:
            await fb.stop()


def text(chunks: list[GenerateChunk]) -> str:
    return "".join(c.text for c in chunks)


async def test_generate_streams_counts_sampling_stop_strings_and_bad_input(fallback, tiny: Path) -> None:
    fb = await fallback(roles(tiny, short=FallbackSpec(path=str(tiny), max_seq_length=16)))
    chunks, end = await fb.generate(role="coding", max_tokens=12, options={"temperature": 0})
    assert chunks and chunks[0].host_id == "fb-host" and chunks[0].slot == "coding"
    assert all(c.host_id is None and c.slot is None for c in chunks[1:])
    assert (end.host_id, end.slot, end.path, end.finish_reason) == ("fb-host", "coding", "torch_cpu", "length")
    assert end.model == f"path {tiny}" and end.completion_tokens == 12 and end.prompt_tokens > 5
    assert sum(c.tokens for c in chunks) <= 12
    greedy = text(chunks)
    again, _ = await fb.generate(role="coding", max_tokens=12, options={"temperature": 0})
    assert text(again) == greedy  # greedy is deterministic

    sampled = {"temperature": 0.9, "top_p": 0.95, "top_k": 50, "repeat_penalty": 1.1}
    a, _ = await fb.generate(role="coding", max_tokens=16, options={**sampled, "seed": 5})
    b, _ = await fb.generate(role="coding", max_tokens=16, options={**sampled, "seed": 5})
    c, _ = await fb.generate(role="coding", max_tokens=16, options={**sampled, "seed": 6})
    assert text(a) == text(b) and text(a) != text(c)

    # num_predict is the catalog's name for max tokens; max_tokens wins when both are given
    _, by_predict = await fb.generate(role="coding", options={"temperature": 0, "num_predict": 3})
    _, both = await fb.generate(role="coding", max_tokens=4, options={"temperature": 0, "num_predict": 3})
    assert (by_predict.completion_tokens, both.completion_tokens) == (3, 4)

    # a stop string: the text ends before it, and the finish reason says so
    seeded = {**sampled, "seed": 11}
    long, _ = await fb.generate(role="coding", max_tokens=24, options=seeded)
    whole = text(long)
    cut = next(i for i in range(len(whole) // 2, len(whole)) if whole[i].strip())  # a visible character mid-way
    stop = whole[cut : cut + 2]
    stopped, stop_end = await fb.generate(role="coding", max_tokens=24, options={**seeded, "stop": ["\x00", stop]})
    assert text(stopped) == whole[: whole.index(stop)] and stop_end.finish_reason == "stop"

    with pytest.raises(RpcError) as bad:
        await fb.generate(role="coding", options={"temperature": "hot"})
    assert (bad.value.status, bad.value.field) == (422, "options.temperature")
    with pytest.raises(RpcError) as long_prompt:
        await fb.generate(role="short", max_tokens=4)
    assert (long_prompt.value.status, long_prompt.value.field) == (413, "messages")
    assert "max_seq_length is 16" in long_prompt.value.detail
    with pytest.raises(RpcError) as missing:
        await fb.generate(role="ghost", model_ref="nothere:1b")
    assert missing.value.status == 404 and "nothere:1b" in missing.value.detail


async def test_cancelling_the_stream_stops_generation(fallback, tiny: Path) -> None:
    fb = await fallback(roles(tiny))
    await fb.generate(role="coding", max_tokens=2)  # loaded
    got = 0
    async for item in fb.rpc.stream(GenerateRequest(role="coding", model_ref="x", messages=HELLO, max_tokens=30000)):
        assert isinstance(item, GenerateChunk)
        got += 1
        if got == 3:
            break

    async def idle() -> bool:
        [slot] = (await fb.slots()).slots
        return slot.in_flight == 0 and not generate_module.RUNNING

    await eventually(idle, timeout_s=30, what="the generation thread to end and the slot to be idle")
    assert not any(t.is_alive() for t in generate_module.RUNNING)


async def test_degraded_warms_recovered_expires_and_lru_evicts(fallback, tiny: Path) -> None:
    other = build_tiny_llama(tiny.parent / "other", seed=1)
    catalog = roles(tiny, general=FallbackSpec(path=str(other)))
    # room for one tiny slot (~6.4 MB) under the threshold, not two
    fb = await fallback(catalog, memory_budget_bytes=10_000_000, offload_threshold=0.9, idle_expiry_s=0.5)
    degraded = LlmDegraded(producer="router", host_id="gpu-1", backend_url="http://gpu-1:11434", reason="down",
                           role="coding")  # fmt: skip
    await publish_event(fb.broker, degraded)
    [loaded] = await fb.seen("evt.fallback.slot.loaded.v1", key="coding")
    assert loaded["source"] == f"path {tiny}" and loaded["memory_bytes"] > 1_000_000 and loaded["load_s"] > 0
    assert loaded["device"] == "cpu" and loaded["path"] == "torch_cpu"

    # a degraded role's slot does not expire
    await asyncio.sleep(1.0)
    assert not fb.of("evt.fallback.slot.evicted.v1")
    [info] = (await fb.slots()).slots
    assert (info.key, info.state, info.expires_in_s) == ("coding", "ready", None)

    # a second role's slot does not fit beside it: the least recently used idle one goes
    await fb.generate(role="general", max_tokens=2)
    [lru] = fb.of("evt.fallback.slot.evicted.v1", key="coding")
    assert "least recently used" in lru["reason"] and lru["memory_bytes"] == loaded["memory_bytes"]
    assert [s.key for s in (await fb.slots()).slots] == ["general"]

    # back to coding, then recovered: its slot expires after idle_expiry_s
    await fb.generate(role="coding", max_tokens=2)
    await publish_event(fb.broker, LlmRecovered(producer="router", host_id="gpu-1", backend_url="http://gpu-1:11434",
                                                role="coding"))  # fmt: skip
    [expired] = await fb.seen("evt.fallback.slot.evicted.v1", within="idle", key="coding")
    assert expired["memory_bytes"] > 0 and not (await fb.slots()).slots


async def test_slots_health_and_advertisement(fallback, tiny: Path) -> None:
    fb = await fallback(roles(tiny, general=None))  # general: qwen3:8b, no GGUF on this host
    await fb.generate(role="coding", max_tokens=2)
    reply = await fb.slots()
    assert reply.host_id == "fb-host" and reply.device == "cpu" and reply.memory_budget_bytes > 0
    [slot] = reply.slots
    assert (slot.key, slot.source_kind, slot.state, slot.path, slot.dtype) == (
        "coding", "path", "ready", "torch_cpu", "float32"
    )  # fmt: skip
    assert slot.memory_bytes == reply.memory_used_bytes > 0 and slot.concurrency == 1 and slot.max_seq_length == 2048
    assert reply.sources == {"coding": f"path {tiny}"}  # general has no source here, so it is not advertised

    health = await fb.rpc.ask(HealthRequest(), subject="rpc.inference-fallback.health.v1")
    assert isinstance(health, HealthReply) and health.healthy and [s.key for s in health.slots or []] == ["coding"]

    ad = await fb.seen(FallbackAdvertised.SUBJECT, instance_id=reply.instance_id)
    advertised = FallbackAdvertised.model_validate({k: v for k, v in ad[-1].items() if k != "subject"})
    assert advertised.sources == {"coding": f"path {tiny}"} and advertised.interval_s == 0.3


async def test_a_roles_own_gguf_from_the_ollama_store_answers_with_real_text(fallback, tmp_path: Path) -> None:
    """SmolLM2-135M's GGUF as this host's Ollama holds it (manifest -> blob), de-quantized by transformers."""
    gguf = smollm2_gguf()
    store = tmp_path / "ollama"
    (store / "blobs").mkdir(parents=True)
    digest = "d" * 64  # the store is read by name; the blob is a link to the packaged GGUF
    (store / "blobs" / f"sha256-{digest}").symlink_to(gguf)
    manifest = store / "manifests" / "registry.ollama.ai" / "library" / "smollm2" / "135m"
    manifest.parent.mkdir(parents=True)
    layer = {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": 1}
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [layer]}))
    catalog = [RoleEntry(role="general", model_ref="smollm2:135m", provider="ollama")]
    fb = await fallback(catalog, ollama_models=store)
    question = [ChatMessage(role="user", content="What is the capital of France?")]
    chunks, end = await fb.generate(role="general", model_ref="smollm2:135m", messages=question, max_tokens=24,
                                    options={"temperature": 0}, timeout_s=240)  # fmt: skip
    assert "Paris" in text(chunks), text(chunks)
    assert end.model == f"gguf {store / 'blobs' / f'sha256-{digest}'} (ollama smollm2:135m)"
    assert end.finish_reason in ("stop", "length") and end.prompt_tokens > 10 and end.path == "torch_cpu"
    assert (await fb.slots()).sources == {"general": end.model}


async def test_generate_with_no_fallback_running_is_a_503(nats_url: str) -> None:
    broker = NatsBroker(nats_url)
    await broker.connect()
    try:
        with pytest.raises(RpcError) as caught:
            async for _ in Rpc(broker, "test-client").stream(GenerateRequest(model_ref="qwen3:8b", messages=HELLO)):
                pass
        assert (caught.value.status, caught.value.code) == (503, "no_responders")
        assert GenerateRequest.SUBJECT in caught.value.detail
    finally:
        await broker.stop()


def _lora(base: Path, out: Path) -> Path:
    """A LoRA adapter of `base` made with peft; `init_lora_weights=False` so it changes what the model says."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(3)
    config = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


async def test_a_lora_adapter_from_the_registry_changes_the_answer(fallback, tiny: Path, tmp_path: Path) -> None:
    registry = tmp_path / "adapters"
    registry.mkdir()
    fb = await fallback(roles(tiny), adapters_dir=registry, adapters_scan_s=0.1)
    greedy = {"role": "coding", "max_tokens": 12, "options": {"temperature": 0}}
    plain, plain_end = await fb.generate(**greedy)
    assert plain_end.adapter is None

    # an operator writes the adapter, then its manifest, atomically, into the registry folder
    name = f"support-{uuid.uuid4().hex[:8]}"  # the stream may hold other tests' adapters
    lora = _lora(tiny, tmp_path / "lora")
    manifest = AdapterManifest(name=name, base_model="coding", path=str(lora), sha256=sha256_file(lora / WEIGHTS_FILE))
    (registry / f".{name}.json.tmp").write_text(manifest.model_dump_json())
    (registry / f".{name}.json.tmp").rename(registry / f"{name}.json")
    [updated] = await fb.seen(AdapterUpdated.SUBJECT, name=name)
    assert updated["change"] == "added" and updated["manifest"] == manifest.model_dump()
    assert updated["producer"] == "inference-fallback"

    # the replica learns it from the event (not its own scan): a generate naming it answers once it has folded it
    async def with_adapter() -> tuple[list[GenerateChunk], GenerateEnd]:
        return await fb.generate(**greedy, adapter=name)

    chunks, end = await eventually(with_adapter, timeout_s=30, what=f"a generate with adapter {name}")
    assert end.adapter == name and end.completion_tokens == 12 and end.slot == "coding"
    assert text(chunks) != text(plain)
    again, _ = await fb.generate(**greedy, adapter=name)
    assert text(again) == text(chunks)  # greedy with the adapter is deterministic too
    # without it, the same slot answers as the base model again (the adapter is switched off, not merged)
    after, after_end = await fb.generate(**greedy)
    assert text(after) == text(plain) and after_end.adapter is None

    with pytest.raises(RpcError) as unknown:
        await fb.generate(**greedy, adapter="nosuch")
    assert (unknown.value.status, unknown.value.code, unknown.value.field) == (404, "adapter_not_found", "adapter")
    assert "'nosuch'" in unknown.value.detail and name in unknown.value.detail
    with pytest.raises(RpcError) as wrong_base:
        await fb.generate(role="general", model_ref="qwen3:8b", max_tokens=2, adapter=name)
    assert (wrong_base.value.status, wrong_base.value.code) == (422, "adapter_wrong_base")

    # weights changed under an unchanged manifest: refused when loading (sha256 checked again), the slot still answers
    other = f"other-{uuid.uuid4().hex[:8]}"
    copy = tmp_path / "lora-copy"
    copy.mkdir()
    for f in lora.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    copied = manifest.model_copy(update={"name": other, "path": str(copy)})
    (registry / f"{other}.json").write_text(copied.model_dump_json())
    await fb.seen(AdapterUpdated.SUBJECT, name=other)
    (copy / WEIGHTS_FILE).write_bytes((copy / WEIGHTS_FILE).read_bytes()[:-8] + b"\0" * 8)

    async def refused() -> RpcError | None:
        try:
            await fb.generate(**greedy, adapter=other)
        except RpcError as exc:
            return exc if exc.code == "adapter_sha256_mismatch" else None
        return None

    mismatch = await eventually(refused, timeout_s=30, what="the changed weights refused")
    assert mismatch.status == 409 and mismatch.field == "sha256"
    still, _ = await fb.generate(**greedy)
    assert text(still) == text(plain)

    # a replica that starts later, with no registry folder of its own, learns the adapter from the stream's history
    await fb.stop()
    late = await fallback(roles(tiny))

    async def late_with_adapter() -> tuple[list[GenerateChunk], GenerateEnd]:
        return await late.generate(**greedy, adapter=name)

    late_chunks, late_end = await eventually(late_with_adapter, timeout_s=30, what="the late replica's generate")
    assert late_end.adapter == name and text(late_chunks) == text(chunks)

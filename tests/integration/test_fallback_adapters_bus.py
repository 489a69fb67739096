"""The adapter watcher against a real NATS server: an added manifest is one `AdapterUpdated` in the EVENTS stream,
even with two replicas watching the same registry folder, and a replica's book folds it from the stream."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest

from contracts.fallback import AdapterManifest, AdapterUpdated
from services.inference_fallback.adapters import WEIGHTS_FILE, AdapterBook, AdapterWatcher, sha256_file
from services.runtime.bus import BusState, build_broker, ensure_streams, publish_event
from services.runtime.telemetry import build_tracer_provider
from tests.harness.tiny_llama import build_tiny_llama

pytestmark = pytest.mark.integration


def _lora(base: Path, out: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


async def test_an_added_manifest_is_one_event_on_the_bus(nats_url: str, tmp_path: Path) -> None:
    adapter = _lora(build_tiny_llama(tmp_path / "base"), tmp_path / "lora")
    registry = tmp_path / "registry"
    registry.mkdir()
    brokers = [build_broker(nats_url, "inference-fallback", build_tracer_provider("t"), BusState()) for _ in range(2)]
    nc = await nats.connect(nats_url)
    try:
        for broker in brokers:
            await broker.connect()
        await ensure_streams(brokers[0])
        watchers = [
            AdapterWatcher(
                registry,
                lambda e, b=broker: publish_event(b, e),  # type: ignore[misc]
                producer="inference-fallback",
                interval_s=0.05,
            )
            for broker in brokers
        ]
        tasks = [asyncio.create_task(w.run()) for w in watchers]
        await asyncio.sleep(0.2)  # both replicas have scanned the empty folder

        manifest = AdapterManifest(
            name="support", base_model="coding", path=str(adapter), sha256=sha256_file(adapter / WEIGHTS_FILE)
        )
        tmp = registry / ".support.json.tmp"
        tmp.write_text(manifest.model_dump_json())
        tmp.rename(registry / "support.json")  # how a writer should publish a manifest: atomically

        async with asyncio.timeout(20):
            while not all("support" in w.known for w in watchers):
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # further scans publish nothing more
        for task in tasks:
            task.cancel()

        js = nc.jetstream()
        info = await js.stream_info("EVENTS", subjects_filter=AdapterUpdated.SUBJECT)
        assert info.state.subjects == {AdapterUpdated.SUBJECT: 1}  # two replicas, one message (same event id)
        sub = await js.subscribe(AdapterUpdated.SUBJECT, ordered_consumer=True)
        event = AdapterUpdated.model_validate_json((await sub.next_msg(timeout=5)).data)
        assert event.change == "added" and event.name == "support" and event.manifest == manifest
        assert event.producer == "inference-fallback"

        book = AdapterBook()  # what every replica holds after folding the stream
        assert book.fold(event) is True
        assert book.resolve("support", role="coding", model_ref="org/m").sha256 == manifest.sha256
    finally:
        await nc.close()
        for broker in brokers:
            await broker.stop()

"""Composition root of the inference fallback."""

from __future__ import annotations

import asyncio
from typing import Any

from contracts.envelope import Envelope
from contracts.fallback import AdapterUpdated, FallbackAdvertised, SlotEvicted, SlotLoaded
from contracts.provisioner import ProvisionFetch
from services.inference_fallback import devices, handlers, loader, metrics
from services.inference_fallback.adapters import AdapterBook, AdapterWatcher
from services.inference_fallback.fetch import CheckpointFetcher, nats_subscribe
from services.inference_fallback.operations import FallbackOps, HostMemory
from services.inference_fallback.settings import InferenceFallbackSettings
from services.inference_fallback.slots import SlotLimits, SlotManager
from services.inference_fallback.sources import SourceFinder
from services.runtime.bus import publish_event
from services.runtime.parts import build_parts
from services.runtime.service import Service, Task


def build_app(settings: InferenceFallbackSettings) -> Service:
    # First: Unsloth patches transformers when imported, and a required Unsloth that is missing stops the start here
    # (UnslothRequired says what to install). It imports torch (to ask for CUDA), not transformers.
    unsloth = devices.prepare_unsloth(settings)
    parts = build_parts("inference-fallback", settings)

    async def publish(event: Envelope, subject: str | None = None) -> None:
        await publish_event(parts.broker, event, subject)

    memory = HostMemory(settings, use_unsloth=unsloth.applied)
    limits = SlotLimits(
        offload_threshold=settings.offload_threshold,
        max_seq_length=settings.max_seq_length,
        concurrency=settings.concurrency_per_slot,
        queue_timeout_s=settings.queue_timeout_s,
        idle_expiry_s=settings.idle_expiry_s,
    )
    changed = asyncio.Event()  # a slot loaded or went: advertise now, not at the next interval

    async def publish_slot(event: Envelope) -> None:
        await publish(event)
        changed.set()

    manager = SlotManager(limits, memory.get, loader.load, publish_slot, producer="inference-fallback",
                          host_id=parts.host_id)  # fmt: skip
    metrics.watch(manager)
    finder = SourceFinder(settings.resolved_models_dir(), settings.ollama_models)
    book = AdapterBook()  # folded from evt.fallback.adapter.updated.v1 (every replica's watcher publishes there)
    broker = parts.broker
    fetcher = CheckpointFetcher(
        parts.rpc, publish, nats_subscribe(lambda: broker.connection), host_id=parts.host_id,
        timeout_s=settings.fetch_timeout_s, provisioner_timeout_s=settings.provisioner_timeout_s,
    )  # fmt: skip
    ops = FallbackOps(settings, parts.rpc, manager, finder, memory, publish, parts.host_id, book, changed, fetcher)
    handlers.register(parts.streams, parts.rpc, ops)
    tasks: list[Task] = [ops.advertise_forever, ops.expire_forever, ops.close_on_cancel]
    if settings.adapters_dir is not None:
        watcher = AdapterWatcher(settings.adapters_dir, publish, producer="inference-fallback",
                                 interval_s=settings.adapters_scan_s)  # fmt: skip
        tasks.append(watcher.run)
    service = parts.service(
        tasks=tasks,
        # AdapterUpdated only with a registry folder; declared always, so the document does not depend on settings
        # ProvisionFetch: a `fallback.repo` checkpoint not on this host is asked of this host's provisioner (fetch.py)
        publishes=[SlotLoaded, SlotEvicted, FallbackAdvertised, AdapterUpdated, ProvisionFetch],
    )
    ops.instance_id = service.instance_id

    def health() -> dict[str, Any]:
        return {"slots": manager.infos()}

    service.health_extra = health
    return service

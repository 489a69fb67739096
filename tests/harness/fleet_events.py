"""What router tests publish and ask: a GPU host's sample, events with their dedup id, a raw route request."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from contracts.envelope import Envelope
from contracts.hardware import GpuDevice, GpuSampled, OllamaLoadedModel
from contracts.router import RouteRequest
from contracts.vram import GIB


def gpu_sample(
    host: str, ollama_url: str, loaded: Iterable[str] = (), *, size_bytes: int = 18 * GIB, context_length: int = 65536
) -> GpuSampled:
    """An 80 GiB GPU host (60 free) whose Ollama at `ollama_url` holds `loaded` in memory."""
    return GpuSampled(
        producer="hardware-probe", host=host, host_id=host, has_gpu=True,
        gpus=[GpuDevice(index=0, name="gpu", uuid=f"GPU-{host}", memory_total_bytes=80 * GIB,
                        memory_free_bytes=60 * GIB, memory_used_bytes=20 * GIB)],
        cpu_logical_cores=16, memory_total_bytes=128 * GIB, memory_available_bytes=100 * GIB,
        ollama_url=ollama_url, ollama_reachable=True, interval_s=60,
        ollama_models=[OllamaLoadedModel(name=n, size_bytes=size_bytes, context_length=context_length) for n in loaded],
    )  # fmt: skip


async def publish(js: Any, *events: Envelope) -> None:
    """Publish to the stream with `Nats-Msg-Id = event_id`, as `publish_event` does, awaiting each ack."""
    for e in events:
        await js.publish(e.SUBJECT, e.model_dump_json().encode(), headers={"Nats-Msg-Id": str(e.event_id)})


async def route(nc: Any, **body: Any) -> dict[str, Any]:
    """The router's raw reply to `RouteRequest(**body)` (an error reply comes back as its `{"error": ...}` body)."""
    msg = await nc.request(RouteRequest.SUBJECT, RouteRequest(**body).model_dump_json().encode(), timeout=10)
    return dict(json.loads(msg.data))

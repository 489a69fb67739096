"""What router tests publish and ask: a GPU host's sample, events with their dedup id, a raw route request, a role's
state and its degraded/recovered transitions."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from contracts.envelope import Envelope
from contracts.hardware import GpuDevice, GpuSampled, OllamaLoadedModel
from contracts.router import BackendsRequest, RouteRequest
from contracts.subjects import EVENTS_STREAM
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


async def role_state(nc: Any, role: str) -> str | None:
    """The role's state as a router replica tells it on the bus (`rpc.router.backends.v1`)."""
    reply = json.loads((await nc.request(BackendsRequest.SUBJECT, b"{}", timeout=5)).data)
    return next((r["state"] for r in reply.get("roles", []) if r["role"] == role), None)


async def transitions(js: Any, role: str) -> list[str]:
    """Every llm.degraded / llm.recovered for `role` on the EVENTS stream, in order (the stream, not core NATS:
    a duplicate JetStream dropped never counts)."""
    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=5.0)
    sub = await js.pull_subscribe("evt.router.llm.>", stream=EVENTS_STREAM, config=config)
    got: list[str] = []
    try:
        while True:
            try:
                msgs = await sub.fetch(100, timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            got += [m.subject.split(".")[3] for m in msgs if json.loads(m.data).get("role") == role]
    finally:
        await sub.unsubscribe()
    return got

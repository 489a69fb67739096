"""Events the router folds, built for its unit tests: a probe's sample, a pull, a gateway's call report."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from contracts.hardware import GpuDevice, GpuSampled, OllamaLoadedModel
from contracts.provisioner import ModelPulled
from contracts.router import BackendCallCompleted
from contracts.vram import GIB

#: A fixed clock origin (seconds since the epoch) every router unit test counts from.
T0 = 1_800_000_000.0


def at(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def sample(host: str, t: float, *, loaded: tuple[str, ...] = (), free_gib: float = 24, reachable: bool = True):
    return GpuSampled(
        producer="hardware-probe", host=host, occurred_at=at(t), host_id=host, has_gpu=True,
        gpus=[GpuDevice(index=0, name="gpu", uuid=f"GPU-{host}", memory_total_bytes=int(48 * GIB),
                        memory_free_bytes=int(free_gib * GIB), memory_used_bytes=0)],
        cpu_logical_cores=8, memory_total_bytes=64 * GIB, memory_available_bytes=32 * GIB,
        ollama_url=f"http://{host}:11434", ollama_reachable=reachable, interval_s=5,
        ollama_models=[OllamaLoadedModel(name=n, size_bytes=5 * GIB, context_length=8192) for n in loaded],
    )  # fmt: skip


def pulled(host: str, model: str, size_gib: float = 5, t: float = T0) -> ModelPulled:
    return ModelPulled(
        producer="provisioner", occurred_at=at(t), request_id=uuid.uuid4(), target_host=host, model=model,
        size_bytes=int(size_gib * GIB),
    )  # fmt: skip


def call(host: str, t: float, outcome: str = "ok", *, ms: float = 100, gw: str = "gw-1", in_flight: int | None = None,
         status: int | None = None) -> BackendCallCompleted:  # fmt: skip
    return BackendCallCompleted(
        producer="gateway", occurred_at=at(t), host_id=host, backend_url=f"http://{host}:11434", model="qwen3:8b",
        outcome=outcome, status_code=status, latency_ms=ms, gateway_instance=gw, in_flight=in_flight,
    )  # fmt: skip

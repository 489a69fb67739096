"""Where the router pulls a model no live backend has: a live host with a reachable Ollama, fitting first."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from contracts.hardware import GpuDevice, GpuSampled
from contracts.provisioner import ModelPulled
from contracts.vram import GIB
from services.router.domain import provision_host, target
from services.router.fleet import Fleet
from services.router.provisioning import nowhere_installed

pytestmark = pytest.mark.unit

T0 = 1_800_000_000.0


def sample(host: str, free_gib: float, *, reachable: bool = True, t: float = T0) -> GpuSampled:
    return GpuSampled(
        producer="hardware-probe", host=host, occurred_at=datetime.fromtimestamp(t, UTC), host_id=host, has_gpu=True,
        gpus=[GpuDevice(index=0, name="gpu", uuid=f"GPU-{host}", memory_total_bytes=80 * GIB,
                        memory_free_bytes=int(free_gib * GIB), memory_used_bytes=0)],
        cpu_logical_cores=8, memory_total_bytes=64 * GIB, memory_available_bytes=32 * GIB,
        ollama_url=f"http://{host}:11434", ollama_reachable=reachable, interval_s=5,
    )  # fmt: skip


def test_the_host_with_room_for_the_model_first_then_the_most_free_memory():
    fleet = Fleet()
    for s in (sample("small", 6), sample("big", 40), sample("bigger", 60, reachable=False), sample("dead", 70, t=0)):
        fleet.observe_sample(s)
    now = T0 + 1
    picked = provision_host(fleet, now, 18 * GIB, 8192)
    assert picked is not None and picked.host_id == "big"  # `bigger` has no reachable Ollama, `dead` is silent
    assert (p := provision_host(fleet, now, None, 8192)) is not None and p.host_id == "big"
    # nothing fits anywhere: still the host with the most room (Ollama may offload to the CPU)
    assert (p := provision_host(fleet, now, 400 * GIB, 8192)) is not None and p.host_id == "big"
    assert provision_host(Fleet(), now, None, 8192) is None


def pulled(host: str) -> ModelPulled:
    return ModelPulled(producer="provisioner", request_id=uuid.uuid4(), target_host=host, model="qwen3:8b")


def test_a_copy_on_a_dead_host_counts_as_nowhere():
    fleet = Fleet()
    qwen = target("qwen3:8b", "ollama")
    fleet.observe_sample(sample("dead", 40, t=0))
    fleet.observe_pulled(pulled("dead"))
    fleet.observe_sample(sample("live", 40))
    assert nowhere_installed(fleet, qwen, T0 + 1)
    fleet.observe_pulled(pulled("live"))
    assert not nowhere_installed(fleet, qwen, T0 + 1)

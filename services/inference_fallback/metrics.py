"""The fallback's metrics (docs/observability.md, "Inference fallback"): generations (OpenTelemetry's `gen_ai.server.*`
conventions where they exist, `modelfleet.fallback.*` for tokens and tokens per second), slot loads and evictions,
recorded where they happen; slots and their memory observed from the slot managers (registered weakly by
`build_app`)."""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Protocol

from opentelemetry.metrics import CallbackOptions, Observation

from services.runtime.metrics import meter

_meter = meter("modelfleet.inference_fallback")

REQUEST_DURATION = _meter.create_histogram(
    "gen_ai.server.request.duration",
    unit="s",
    description="A fallback generation from request to its last token, waiting for the slot included "
    "(`modelfleet.slot`).",
)
TIME_TO_FIRST_TOKEN = _meter.create_histogram(
    "gen_ai.server.time_to_first_token",
    unit="s",
    description="From the request to its first text (a cold slot's load included).",
)
TOKENS = _meter.create_histogram(
    "modelfleet.fallback.token.usage",
    unit="{token}",
    description="Tokens per generation by `gen_ai.token.type`: input (the prompt) and output (generated).",
)
OUTPUT_RATE = _meter.create_histogram(
    "modelfleet.fallback.output_tokens",
    unit="{token}/s",
    description="Generated tokens per second of one generation: output tokens over the time from the prompt going "
    "in to the last token (prompt processing included, waiting for the slot or a permit not).",
)
LOAD_DURATION = _meter.create_histogram(
    "modelfleet.fallback.slot.load.duration",
    unit="s",
    description="Loading a slot's model into memory (evicting others to make room included), by "
    "`modelfleet.slot.path` and `modelfleet.slot.load.result` (loaded, failed).",
)
EVICTIONS = _meter.create_counter(
    "modelfleet.fallback.evictions",
    unit="{eviction}",
    description="Slots taken out of memory by `modelfleet.eviction.reason`: lru (room for another slot), offload "
    "(room for a CUDA slot loaded with CPU offload), idle (idle past MODELFLEET_FALLBACK_IDLE_EXPIRY_S), "
    "source_changed.",
)


def generation(slot: str) -> dict[str, str]:
    """The attributes of a generation's series: the operation (as the gen_ai conventions name it) and the slot."""
    return {"gen_ai.operation.name": "chat", "modelfleet.slot": slot}


class SlotView(Protocol):
    key: str
    state: str

    @property
    def memory_bytes(self) -> int: ...


class Slots(Protocol):
    """What the gauges read of one slot manager."""

    budget_bytes: int

    def views(self) -> Iterable[tuple[SlotView, str]]:
        """Each slot held now (loading or ready) with its path (cpu, cuda, unsloth_cuda...)."""
        ...


_managers: weakref.WeakSet[Slots] = weakref.WeakSet()


def watch(manager: Slots) -> None:
    """Let the gauges read this manager's slots and budget."""
    _managers.add(manager)


def _slots(_options: CallbackOptions) -> Iterable[Observation]:
    counts = {"loading": 0, "ready": 0}
    for manager in list(_managers):
        for slot, _path in manager.views():
            counts[slot.state] = counts.get(slot.state, 0) + 1
    for state, n in counts.items():
        yield Observation(n, {"modelfleet.slot.state": state})


def _slot_memory(_options: CallbackOptions) -> Iterable[Observation]:
    for manager in list(_managers):
        for slot, path in manager.views():
            attributes = {
                "modelfleet.slot": slot.key,
                "modelfleet.slot.state": slot.state,
                "modelfleet.slot.path": path,
            }
            yield Observation(slot.memory_bytes, attributes)


def _budget(_options: CallbackOptions) -> Iterable[Observation]:
    managers = [m for m in list(_managers) if m.budget_bytes]
    if managers:
        yield Observation(sum(m.budget_bytes for m in managers))


_meter.create_observable_gauge(
    "modelfleet.fallback.slots",
    callbacks=[_slots],
    unit="{slot}",
    description="Slots held by `modelfleet.slot.state`: fetching, loading or ready.",
)
_meter.create_observable_gauge(
    "modelfleet.fallback.slot.memory",
    callbacks=[_slot_memory],
    unit="By",
    description="Memory each slot takes (`modelfleet.slot`: its role or model reference; `modelfleet.slot.path`; "
    "`modelfleet.slot.state`): the loaded model's "
    "footprint, or the estimate while it loads.",
)
_meter.create_observable_gauge(
    "modelfleet.fallback.memory.budget",
    callbacks=[_budget],
    unit="By",
    description="The memory budget slots share (measured at the first load, or "
    "MODELFLEET_FALLBACK_MEMORY_BUDGET_BYTES); absent before the first load.",
)

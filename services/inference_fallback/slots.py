"""The slot manager: one loaded model per role, loaded on demand (or warmed by `llm.degraded`), bounded by a memory
budget measured from the host, evicted least-recently-used when a new one would not fit, expired when idle after
its role recovered. Loading runs in a thread, one load at a time; requests for a slot that is loading wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from contracts.envelope import Envelope
from contracts.fallback import SlotEvicted, SlotInfo, SlotLoaded
from contracts.rpc import RpcError
from services.inference_fallback import domain, metrics
from services.inference_fallback.adapters import AdapterSet
from services.inference_fallback.devices import DevicePlan
from services.inference_fallback.loader import Loaded
from services.inference_fallback.sources import Source

log = logging.getLogger(__name__)

Publish = Callable[[Envelope], Awaitable[None]]
#: Loads a source on a plan: (source, plan, max_memory for CUDA offload or None, the slot's max_seq_length).
LoadFn = Callable[[Source, DevicePlan, "dict[Any, int] | None", int], Loaded]
#: The device plan of a source on this host and the memory budget in bytes (measured once, on first use: it imports
#: torch).
HostFn = Callable[[Source], Awaitable[tuple[DevicePlan, int]]]
#: Brings a source that is not on this host yet (a `fallback.repo` the provisioner fetches) and returns it.
FetchFn = Callable[[], Awaitable[Source]]


@dataclass(frozen=True)
class SlotLimits:
    #: Fraction of the budget past which a new slot evicts idle ones (CPU), or is loaded with CPU offload (CUDA).
    offload_threshold: float = 0.9
    max_seq_length: int = 2048
    concurrency: int = 1
    queue_timeout_s: float = 30.0
    idle_expiry_s: float = 300.0


@dataclass
class Slot:
    key: str
    source: Source
    plan: DevicePlan
    max_seq_length: int
    concurrency: int
    estimate_bytes: int
    state: str = "loading"
    #: Why the slot failed, as the typed error a request gets (a failed fetch names the repo and the reason).
    failure: RpcError | None = None
    loaded: Loaded | None = None
    #: The loaded model and its LoRA adapters: every generation goes through it (after an adapter was loaded, the
    #: bare model has LoRA layers injected and only the PeftModel can switch them off).
    adapters: AdapterSet | None = None
    error: str | None = None
    in_flight: int = 0
    last_used: float = 0.0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    permits: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.permits = asyncio.Semaphore(self.concurrency)

    @property
    def memory_bytes(self) -> int:
        return self.loaded.memory_bytes if self.loaded is not None else self.estimate_bytes

    def use(self) -> domain.SlotUse:
        return domain.SlotUse(self.key, self.memory_bytes, self.in_flight, self.last_used, self.state == "ready")


class SlotManager:
    """Slots by key (the role, or the model reference of a request without one)."""

    def __init__(
        self,
        limits: SlotLimits,
        host: HostFn,
        load: LoadFn,
        publish: Publish,
        *,
        producer: str,
        host_id: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits, self._host, self._load, self._publish = limits, host, load, publish
        self.budget_bytes = 0
        self.device = "unknown"
        self.producer, self.host_id, self.clock = producer, host_id, clock
        self.health = domain.RoleHealth()
        self.slots: dict[str, Slot] = {}
        self.failures: dict[str, Slot] = {}
        self._load_lock = asyncio.Lock()  # one load at a time: memory accounting stays true while loading

    # --- using a slot ----------------------------------------------------------------------------------------------

    async def ensure(self, key: str, source: Source, fetch: FetchFn | None = None) -> Slot:
        """The ready slot of `key`, loading it first if needed; every caller of a loading slot waits for that load.
        With `fetch`, `source` is what the slot shows while `fetch()` brings the real one (state `fetching`, outside
        the load lock: other slots load and answer meanwhile)."""
        slot = self.slots.get(key)
        if slot is not None and slot.source.description != source.description and slot.in_flight == 0:
            await self.evict(key, f"its source changed to {source.description}", cause="source_changed")
            slot = None
        if slot is None:
            plan, self.budget_bytes = await self._host(source)
            self.device = plan.device
            limit = source.max_seq_length or self.limits.max_seq_length
            estimate = 0 if fetch is not None else await asyncio.to_thread(source.estimate_bytes, plan.dtype)
            slot = Slot(key, source, plan, limit, self.limits.concurrency, estimate, last_used=self.clock())
            slot.state = "fetching" if fetch is not None else "loading"
            self.slots[key] = slot
            self.failures.pop(key, None)
            task = asyncio.create_task(self._load_slot(slot, fetch))
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)
        await slot.ready.wait()
        if slot.state != "ready":
            if slot.failure is not None:
                raise slot.failure
            raise RpcError(503, f"slot {key}: loading {source.description} failed: {slot.error}", code="load_failed")
        return slot

    @contextlib.asynccontextmanager
    async def use(self, slot: Slot) -> AsyncIterator[Slot]:
        """Hold one of the slot's concurrency permits: a request past the limit waits up to `queue_timeout_s`,
        then gets a 429."""
        try:
            await asyncio.wait_for(slot.permits.acquire(), self.limits.queue_timeout_s)
        except TimeoutError:
            raise RpcError(
                429,
                f"slot {slot.key}: {slot.concurrency} request(s) already generating; none finished within "
                f"{self.limits.queue_timeout_s:g} s",
                code="busy",
            ) from None
        if slot.loaded is None:  # evicted or expired between ensure() and here
            slot.permits.release()
            raise RpcError(503, f"slot {slot.key} was evicted before it answered; ask again", code="evicted")
        slot.in_flight += 1
        slot.last_used = self.clock()
        try:
            yield slot
        finally:
            slot.in_flight -= 1
            slot.last_used = self.clock()
            slot.permits.release()

    # --- loading, eviction, expiry ---------------------------------------------------------------------------------

    async def _load_slot(self, slot: Slot, fetch: FetchFn | None = None) -> None:
        started, result, loading = time.perf_counter(), "failed", fetch is None
        try:
            if fetch is not None:
                try:
                    slot.source = await fetch()
                except RpcError as exc:
                    slot.failure = exc
                    raise
                loading = True  # the load duration below is the load's, not the fetch's
                slot.estimate_bytes = await asyncio.to_thread(slot.source.estimate_bytes, slot.plan.dtype)
                slot.state = "loading"
            async with self._load_lock:
                started = time.perf_counter()  # the load itself, not the wait for another slot's
                max_memory = await self._make_room(slot)
                slot.loaded = await asyncio.to_thread(
                    self._load, slot.source, slot.plan, max_memory, slot.max_seq_length
                )
                slot.adapters = AdapterSet(slot.loaded.model)
            slot.state, result = "ready", "loaded"
            slot.last_used = self.clock()
            await self._emit(SlotLoaded(
                producer=self.producer, host=self.host_id, model=slot.source.description[:256], device=slot.plan.device,
                memory_bytes=slot.memory_bytes, key=slot.key, source=slot.source.description[:4096],
                load_s=slot.loaded.load_s, path=slot.plan.path,
            ))  # fmt: skip
        except Exception as exc:
            slot.state, slot.error = "failed", f"{type(exc).__name__}: {exc}"[:2000]
            log.warning("slot %s: loading %s failed: %s", slot.key, slot.source.description, slot.error)
            if self.slots.get(slot.key) is slot:
                del self.slots[slot.key]
            self.failures[slot.key] = slot
        finally:
            if loading:
                metrics.LOAD_DURATION.record(
                    time.perf_counter() - started,
                    {"modelfleet.slot.path": slot.plan.path, "modelfleet.slot.load.result": result},
                )
            slot.ready.set()

    async def _make_room(self, slot: Slot) -> dict[Any, int] | None:
        """Evict idle slots (LRU) until the new one fits under the threshold; on CUDA, load what still does not fit
        with CPU offload rather than refusing; on a CPU host, refuse with a 507 naming the sizes."""
        others = [s.use() for s in self.slots.values() if s is not slot and s.state == "ready"]
        cap = int(self.budget_bytes * self.limits.offload_threshold)
        victims = domain.evictions_to_fit(others, slot.estimate_bytes, cap, keep=slot.key)
        if victims is None and slot.plan.cuda:
            victims = [s.key for s in others if s.in_flight == 0]
            used = sum(s.memory_bytes for s in others if s.key not in victims)
            for key in victims:
                await self.evict(key, f"making room for {slot.key}", cause="offload")
            return {0: max(0, cap - used), "cpu": max(0, self.budget_bytes)}
        if victims is None:
            used = sum(s.memory_bytes for s in others)
            raise RpcError(
                507,
                f"slot {slot.key}: {slot.source.description} needs ~{slot.estimate_bytes} bytes; the budget is "
                f"{self.budget_bytes} bytes (eviction threshold {self.limits.offload_threshold:g}), "
                f"{used} held by slots that are answering",
                code="insufficient_memory",
            )
        for key in victims:
            await self.evict(key, f"least recently used: making room for {slot.key}", cause="lru")
        return None

    async def evict(self, key: str, reason: str, *, cause: str) -> bool:
        """Take the slot out; `reason` is said in the event and the log, `cause` (lru, offload, idle,
        source_changed) is the metrics' bounded label."""
        slot = self.slots.pop(key, None)
        if slot is None:
            return False
        metrics.EVICTIONS.add(1, {"modelfleet.eviction.reason": cause})
        memory = slot.memory_bytes
        slot.loaded = slot.adapters = None  # the last references to the model: memory goes back at the next collection
        await asyncio.to_thread(_release_memory, slot.plan)
        log.info("slot %s evicted (%s): %d bytes", key, reason, memory)
        await self._emit(SlotEvicted(
            producer=self.producer, host=self.host_id, model=slot.source.description[:256], reason=reason[:2000],
            key=key, memory_bytes=memory,
        ))  # fmt: skip
        return True

    async def expire_idle(self) -> list[str]:
        """Evict every slot whose idle time ran out (see domain.expires_at)."""
        now = self.clock()
        gone = domain.expired([s.use() for s in self.slots.values()], self.health, self.limits.idle_expiry_s, now)
        for key in gone:
            await self.evict(
                key, f"idle for {self.limits.idle_expiry_s:g} s after its role recovered or last use", cause="idle"
            )
        return gone

    async def close(self) -> None:
        for key in list(self.slots):
            slot = self.slots.pop(key)
            slot.loaded = slot.adapters = None

    async def _emit(self, event: Envelope) -> None:
        try:
            await self._publish(event)
        except Exception:  # a lost fact must not fail a load or an eviction
            log.exception("could not publish %s", event.SUBJECT)

    # --- what the slots look like ----------------------------------------------------------------------------------

    def views(self) -> Iterator[tuple[Slot, str]]:
        """Each slot held now with its path, for the metrics' gauges."""
        for slot in list(self.slots.values()):
            yield slot, slot.plan.path

    def used_bytes(self) -> int:
        return sum(s.memory_bytes for s in self.slots.values())

    def infos(self) -> list[SlotInfo]:
        now = self.clock()
        out = []
        for slot in [*self.slots.values(), *(f for k, f in self.failures.items() if k not in self.slots)]:
            expiry = domain.expires_at(slot.use(), self.health, self.limits.idle_expiry_s)
            out.append(SlotInfo(
                key=slot.key, source=slot.source.description[:4096], source_kind=slot.source.kind,
                state=slot.state, path=slot.plan.path, dtype=slot.plan.dtype, max_seq_length=slot.max_seq_length,
                memory_bytes=slot.memory_bytes if slot.state != "failed" else 0, in_flight=slot.in_flight,
                concurrency=slot.concurrency, load_s=slot.loaded.load_s if slot.loaded else None,
                idle_s=round(max(0.0, now - slot.last_used), 3) if slot.in_flight == 0 else 0.0,
                expires_in_s=None if expiry is None or slot.state != "ready" else round(max(0.0, expiry - now), 3),
                error=slot.error,
            ))  # fmt: skip
        return out


def _release_memory(plan: DevicePlan) -> None:
    import gc

    gc.collect()
    if plan.cuda:
        import torch

        torch.cuda.empty_cache()

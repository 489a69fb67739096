"""The fallback's use cases: generate from a role's slot, warm and release slots on the router's role events,
answer and advertise what this replica holds, and learn the active roles (and their `fallback` entries) from the
catalog."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

from contracts.catalog import RoleEntry, RolesRequest
from contracts.envelope import Envelope
from contracts.fallback import (
    AdapterUpdated,
    FallbackAdvertised,
    FallbackSpec,
    GenerateChunk,
    GenerateEnd,
    GenerateRequest,
    SlotsReply,
)
from contracts.router import LlmDegraded, LlmRecovered
from contracts.rpc import RpcError
from services.inference_fallback import domain, metrics
from services.inference_fallback.adapters import AdapterBook, AdapterError
from services.inference_fallback.devices import DevicePlan, HostFacts, choose_path
from services.inference_fallback.fetch import CheckpointFetcher
from services.inference_fallback.generate import Generation, prompt_ids
from services.inference_fallback.settings import InferenceFallbackSettings
from services.inference_fallback.slots import FetchFn, SlotManager
from services.inference_fallback.sources import NotFetched, Source, SourceError, SourceFinder
from services.runtime.rpc import Rpc

log = logging.getLogger(__name__)
PRODUCER = "inference-fallback"


class HostMemory:
    """This host's slot budget, measured once on first use, and the device plan of each kind of source (a GGUF never
    takes the Unsloth path); choosing imports torch, so it runs in a thread. `use_unsloth` is whether
    `prepare_unsloth` applied Unsloth at start."""

    def __init__(
        self, settings: InferenceFallbackSettings, *, use_unsloth: bool = False, facts: HostFacts | None = None
    ) -> None:
        self.settings = settings
        self.use_unsloth, self.facts = use_unsloth, facts  # facts: read from torch unless given
        self._measured: tuple[DevicePlan, int] | None = None
        self._plans: dict[bool, DevicePlan] = {}
        self._lock = asyncio.Lock()

    async def get(self, source: Source | None = None) -> tuple[DevicePlan, int]:
        """The plan a slot of `source` takes (without one: a checkpoint's) and the budget."""
        async with self._lock:
            if self._measured is None:
                self._measured = await asyncio.to_thread(self._measure)
            gguf = source.gguf if source is not None else False
            if gguf not in self._plans:
                self._plans[gguf] = await asyncio.to_thread(self._plan, gguf)
            return self._plans[gguf], self._measured[1]

    def _plan(self, gguf: bool) -> DevicePlan:
        s = self.settings
        return choose_path(dtype=s.dtype, allow_cuda=s.allow_cuda, use_unsloth=self.use_unsloth, gguf=gguf,
                           facts=self.facts)  # fmt: skip

    def _measure(self) -> tuple[DevicePlan, int]:
        s = self.settings
        plan = self._plan(False)
        if s.memory_budget_bytes is not None:
            return plan, s.memory_budget_bytes
        if plan.cuda:
            import torch

            total = torch.cuda.mem_get_info(0)[1]
        else:
            import psutil

            total = psutil.virtual_memory().total
        budget = int(total * s.memory_fraction)
        log.info("slot path %s (%s); memory budget %d bytes (%g of %d)", plan.path, plan.reason, budget,
                 s.memory_fraction, total)  # fmt: skip
        return plan, budget


class FallbackOps:
    def __init__(
        self,
        settings: InferenceFallbackSettings,
        rpc: Rpc,
        manager: SlotManager,
        finder: SourceFinder,
        memory: HostMemory,
        publish: Callable[[Envelope], Awaitable[None]],
        host_id: str,
        book: AdapterBook,
        changed: asyncio.Event | None = None,
        fetcher: CheckpointFetcher | None = None,
    ) -> None:
        self.settings, self.rpc, self.manager, self.finder = settings, rpc, manager, finder
        self.memory, self.publish, self.host_id, self.book = memory, publish, host_id, book
        #: asks the provisioner for a `fallback.repo` checkpoint this host does not have yet (None: it is a 404)
        self.fetcher = fetcher
        self.instance_id = "unset"
        #: set when a slot loads or goes, so that the routers see it at once rather than an interval later
        self.changed = changed or asyncio.Event()
        self.roles: dict[str, RoleEntry] = {}
        self.roles_at = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    # --- sources -----------------------------------------------------------------------------------------------

    async def refresh_roles(self) -> None:
        """The active profile set's roles, from the catalog; on failure the last answer is kept."""
        try:
            reply = await self.rpc.ask(RolesRequest(), timeout_s=self.settings.catalog_timeout_s)
        except RpcError as exc:
            log.warning("rpc.catalog.roles.v1 failed (%s); keeping %d known roles", exc, len(self.roles))
            return
        self.roles = {r.role: r for r in reply.roles}
        self.roles_at = time.monotonic()

    async def source_for(self, role: str | None, model_ref: str) -> Source:
        """A role's source by its catalog entry (its `fallback`, else its own GGUF); a request without a role, or
        for a role the catalog does not know, by `model_ref`."""
        if role is not None and role not in self.roles and time.monotonic() - self.roles_at > 1.0:
            await self.refresh_roles()
        entry = self.roles.get(role) if role is not None else None
        if entry is None:
            return await asyncio.to_thread(self.finder.find, model_ref)
        return await asyncio.to_thread(self.finder.find, entry.model_ref, entry.provider, entry.fallback)

    async def loadable(self, role: str | None, model_ref: str) -> tuple[Source, FetchFn | None]:
        """`source_for`, except that a `fallback.repo` checkpoint not on this host yet is the placeholder source and
        what fetches it through the provisioner (when this replica has a fetcher)."""
        try:
            return await self.source_for(role, model_ref), None
        except NotFetched as missing:
            if self.fetcher is None:
                raise
            spec = missing.spec

            async def fetch() -> Source:
                return await self._fetched(spec)

            return missing.placeholder, fetch

    async def _fetched(self, spec: FallbackSpec) -> Source:
        assert self.fetcher is not None and spec.repo is not None and spec.revision is not None
        repo, revision = spec.repo, spec.revision
        commit, by = await self.fetcher.fetch(repo, revision)
        if commit != revision:
            self.finder.pins[f"{repo}@{revision}"] = commit
        try:
            return await asyncio.to_thread(self.finder.find, "", "ollama", spec)
        except NotFetched:
            raise SourceError(
                404,
                f"fallback.repo: the provisioner of host {by} fetched {repo}@{revision} (commit {commit}), but this "
                f"replica's models directory {self.finder.models_dir} does not have {repo}/{commit}/: run the fallback "
                "where that provisioner's models directory is (MODELFLEET_FALLBACK_MODELS_DIR)",
                field="fallback.repo",
            ) from None

    async def sources(self) -> dict[str, str]:
        """role -> the source its slot would load, for every active role that has one on this host (a `fallback.repo`
        checkpoint not fetched yet counts: the provisioner fetches it on first use)."""
        out: dict[str, str] = {}
        for role, entry in self.roles.items():
            with contextlib.suppress(SourceError):
                source, _ = await self.loadable(role, entry.model_ref)
                out[role] = source.description[:4096]
        return out

    # --- generation --------------------------------------------------------------------------------------------

    async def generate(self, req: GenerateRequest) -> AsyncIterator[GenerateChunk | GenerateEnd]:
        """The slot's answer, streamed; with `adapter`, that LoRA adapter of the book applied (an `AdapterError`,
        from the book or from loading it, is the RPC error it names: 404, 409, 422 or 503, field `adapter`...)."""
        try:
            async with contextlib.aclosing(self._generate(req)) as items:  # a cancel closes it now, not at GC
                async for item in items:
                    yield item
        except AdapterError as exc:
            raise RpcError(exc.status, str(exc), code=exc.code, field=exc.field) from None

    async def _generate(self, req: GenerateRequest) -> AsyncGenerator[GenerateChunk | GenerateEnd]:
        started = time.perf_counter()
        sampling = domain.sampling(req.options, req.max_tokens)
        manifest = self.book.resolve(req.adapter, role=req.role, model_ref=req.model_ref) if req.adapter else None
        key = req.role or req.model_ref
        slot = await self.manager.ensure(key, *await self.loadable(req.role, req.model_ref))
        async with self.manager.use(slot):
            loaded, adapters = slot.loaded, slot.adapters
            assert loaded is not None and adapters is not None  # use() refuses an evicted slot
            generating = time.perf_counter()
            ids = await asyncio.to_thread(prompt_ids, loaded, req.messages, slot.max_seq_length)
            generation = Generation(loaded, ids, sampling, slot.max_seq_length, adapters=adapters, adapter=manifest)
            first = True
            async with contextlib.aclosing(generation.deltas()) as deltas:
                async for text, tokens in deltas:
                    if first:
                        metrics.TIME_TO_FIRST_TOKEN.record(time.perf_counter() - started, metrics.generation(key))
                    yield GenerateChunk(
                        text=text, tokens=tokens, host_id=self.host_id if first else None, slot=key if first else None
                    )
                    first = False
            o = generation.outcome
            _record(key, o.prompt_tokens, o.completion_tokens, started, generating)
            yield GenerateEnd(
                host_id=self.host_id, slot=key, model=slot.source.description[:256], prompt_tokens=o.prompt_tokens,
                completion_tokens=o.completion_tokens, finish_reason=o.finish_reason, path=slot.plan.path,
                adapter=manifest.name if manifest is not None else None,
            )  # fmt: skip

    # --- the adapter registry's events -------------------------------------------------------------------------

    def on_adapter_updated(self, event: AdapterUpdated) -> None:
        if self.book.fold(event):
            sha = event.manifest.sha256 if event.manifest is not None else "-"
            log.info("fallback.adapter.book %s name=%s sha256=%s (%d known)", event.change, event.name, sha,
                     len(self.book.adapters))  # fmt: skip

    # --- the router's role events ------------------------------------------------------------------------------

    def on_degraded(self, event: LlmDegraded) -> None:
        role = self.manager.health.degraded(event, time.monotonic())
        if role is not None:
            self._spawn(self.warm(role, event))

    def on_recovered(self, event: LlmRecovered) -> None:
        self.manager.health.recovered(event, time.monotonic())

    async def warm(self, role: str, event: LlmDegraded) -> None:
        """Load the role's slot now, so the first request after the outage does not wait for it."""
        try:
            entry = self.roles.get(role)
            if entry is None:
                await self.refresh_roles()
                entry = self.roles.get(role)
            if entry is None:
                log.warning("llm.degraded names role %r, which the catalog does not list: no slot warmed", role)
                return
            await self.manager.ensure(role, *await self.loadable(role, entry.model_ref))
        except RpcError as exc:
            log.warning("warming the slot of %r failed: %s", role, exc)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- what this replica holds -------------------------------------------------------------------------------

    async def slots_reply(self) -> SlotsReply:
        plan, budget = await self.memory.get()
        return SlotsReply(
            host_id=self.host_id, instance_id=self.instance_id, device=plan.device, memory_budget_bytes=budget,
            memory_used_bytes=self.manager.used_bytes(), slots=self.manager.infos(), sources=await self.sources(),
        )  # fmt: skip

    async def advertise_forever(self) -> None:
        """evt.fallback.advertised.v1 every `advertise_interval_s`, and at once when a slot loads or goes: alive,
        slots, budget, each role's source."""
        interval = self.settings.advertise_interval_s
        await self.memory.get()
        while True:
            await self.refresh_roles()
            reply = await self.slots_reply()
            await self.publish(FallbackAdvertised(
                producer=PRODUCER, host=self.host_id, instance_id=self.instance_id, device=reply.device,
                memory_budget_bytes=reply.memory_budget_bytes, memory_used_bytes=reply.memory_used_bytes,
                slots=reply.slots, sources=reply.sources, interval_s=interval,
            ))  # fmt: skip
            # asyncio.wait, not a timeout around the wait: on 3.11 a timeout expiring together with the service's
            # cancel can swallow the cancel, and this loop would never stop
            waiter = asyncio.ensure_future(self.changed.wait())
            try:
                await asyncio.wait({waiter}, timeout=interval)
            finally:
                waiter.cancel()
            self.changed.clear()

    async def expire_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.expiry_check_s)
            await self.manager.expire_idle()

    async def close_on_cancel(self) -> None:
        """A service task that only waits: when the service stops, warming tasks and slots go with it."""
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.manager.close()


def _record(slot: str, prompt_tokens: int, completion_tokens: int, started: float, generating: float) -> None:
    """One finished generation's figures (metrics.py); `generating` is when its prompt went in."""
    now = time.perf_counter()
    at = metrics.generation(slot)
    metrics.REQUEST_DURATION.record(now - started, at)
    metrics.TOKENS.record(prompt_tokens, {**at, "gen_ai.token.type": "input"})
    metrics.TOKENS.record(completion_tokens, {**at, "gen_ai.token.type": "output"})
    if completion_tokens and now > generating:
        metrics.OUTPUT_RATE.record(completion_tokens / (now - generating), at)

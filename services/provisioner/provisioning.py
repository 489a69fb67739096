"""Carries out one provision request: resolve roles, pick hosts, and ensure each model on each host, once.

Every (role or model, host) ends in exactly one action: present, pulled, imported, skipped or failed. Downloads
are single-flight per (host, model) and per pinned file; outcomes are written with their inventory and audit rows
and their events (model.pulled / failed) through the outbox, in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from nats.js.kv import KeyValue

from contracts.model_ref import ModelRef, ModelRefError, parse_model_ref
from contracts.provisioner import (
    ModelPulled,
    ProvisionActionResult,
    ProvisionCommand,
    ProvisionFailed,
    ProvisionProgress,
)
from services.provisioner import domain, metrics
from services.provisioner.catalog_client import CatalogClient
from services.provisioner.flights import FleetLease, ResultCache, SingleFlight, lease_key
from services.provisioner.hosts import HostDirectory
from services.provisioner.hub import Cancelled, Downloaded, HubClient, RemoteFile
from services.provisioner.local_files import register_local
from services.provisioner.ollama_backend import OllamaBackend, backends
from services.provisioner.outcomes import Failure, Target, action, backend_call, hub_call, inventory_row, kind_of
from services.provisioner.progress import ProgressRelay, Publish
from services.provisioner.settings import ProvisionerSettings
from services.provisioner.store import REGISTRY_DIGESTS_STATE, InventoryRow, ProvisionerStore
from services.runtime.bus import FLIGHTS_BUCKET
from services.runtime.outbox import Outbox

log = logging.getLogger(__name__)
T = TypeVar("T")


class Provisioner:
    def __init__(
        self,
        *,
        settings: ProvisionerSettings,
        store: ProvisionerStore,
        outbox: Outbox,
        publish: Publish,
        hosts: HostDirectory,
        hub: HubClient,
        catalog: CatalogClient,
        host_id: str,
        backend: Callable[[str], OllamaBackend] | None = None,
    ):
        self.settings = settings
        self.store = store
        self.outbox = outbox
        self.publish = publish
        self.hosts = hosts
        self.hub = hub
        self.catalog = catalog
        self.host_id = host_id
        self.backend = backend or backends(settings.ollama_timeout_s)
        self.pulls: SingleFlight[ProvisionActionResult] = SingleFlight()
        self.files: SingleFlight[Downloaded] = SingleFlight()
        self.cache: ResultCache[ProvisionActionResult] = ResultCache()
        #: Across replicas: one holder per host x model fleet-wide (docs/provisioning.md, "Single flight").
        self.lease: FleetLease[ProvisionActionResult] = FleetLease(
            self._flights_bucket,
            f"{host_id}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
            ActionCodec(),
            ttl_s=settings.flight_lease_ttl_s,
            poll_s=settings.flight_lease_poll_s,
        )
        self._kv: KeyValue | None = None
        #: Transfers running now by kind (read by the metrics' gauge): Ollama pulls, hub files, checkpoints.
        self.transfers: Counter[str] = Counter(ollama_pull=0, hub_file=0, checkpoint=0)

    def transfers_in_flight(self) -> dict[str, int]:
        return dict(self.transfers)

    @contextlib.contextmanager
    def _transferring(self, kind: str) -> Iterator[None]:
        self.transfers[kind] += 1
        try:
            yield
        finally:
            self.transfers[kind] -= 1

    async def _flights_bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.hosts.broker.connection.jetstream().key_value(FLIGHTS_BUCKET)
        return self._kv

    async def _flight(
        self, host: str, name: str, work: Callable[[], Awaitable[ProvisionActionResult]]
    ) -> ProvisionActionResult:
        """One download of `name` on `host` at a time: in this process (joined), and fleet-wide (the lease)."""
        return await self.pulls.run((host, name), lambda: self.lease.run(lease_key(host, name), work))

    async def handle(self, cmd: ProvisionCommand, *, resumed: bool = False) -> list[ProvisionActionResult]:
        """The request's actions; `resumed`: an earlier delivery of it was accepted and did not complete."""
        targets, actions = await self._targets(cmd)
        targets = [replace(t, resumed=resumed) for t in targets]
        # A checkpoint goes into this provisioner's own models dir: the hosts and their Ollamas concern the others
        # only (a request for checkpoints alone, like the fallback's, gets no "no host with a reachable Ollama").
        pulled = [t for t in targets if kind_of(t.model) != "checkpoint"]
        urls, bad = await self.hosts.targets(list(cmd.hosts)) if pulled else ({}, {})
        for host, reason in bad.items():
            actions += [action(t, host, "failed", reason) for t in pulled]
        if pulled and not urls and not bad:
            actions += [action(t, "*", "failed", "no host with a reachable Ollama is known") for t in pulled]
        jobs: list[Awaitable[ProvisionActionResult]] = []
        for t in targets:
            if kind_of(t.model) == "checkpoint":
                jobs.append(self._cached(cmd, t, self.host_id, ""))
            else:
                jobs += [self._cached(cmd, t, host, url) for host, url in urls.items()]
        actions += await asyncio.gather(*jobs)
        return actions

    async def _targets(self, cmd: ProvisionCommand) -> tuple[list[Target], list[ProvisionActionResult]]:
        targets = [Target(None, m) for m in cmd.models]
        if cmd.models and not cmd.roles:
            return targets, []
        try:
            reply = await self.catalog.roles()
        except Failure as exc:
            wanted = list(cmd.roles) or ["*"]
            return targets, [
                ProvisionActionResult(role=r, model="*", target_host="*", action="failed", reason=str(exc))
                for r in wanted
            ]
        by_role = {e.role: e for e in reply.roles}
        failed = [
            ProvisionActionResult(
                role=r,
                model="*",
                target_host="*",
                action="failed",
                reason=f"role {r!r} is not in the active profile set {reply.profile_set!r}",
            )
            for r in cmd.roles
            if r not in by_role
        ]
        chosen = [by_role[r] for r in cmd.roles if r in by_role] if cmd.roles else list(by_role.values())
        targets += [Target(e.role, e.model_ref, e.provider, e.auto_download) for e in chosen]
        return targets, failed

    async def _cached(self, cmd: ProvisionCommand, t: Target, host: str, url: str) -> ProvisionActionResult:
        key = (t.role or t.model, host)
        hit = self.cache.get(key)
        if hit is not None and not cmd.force and hit.model == t.model and await self._still_there(hit, host, url):
            return hit
        result = await self._ensure(cmd, t, host, url)
        if result.action in ("present", "pulled", "imported"):
            self.cache.put(key, result.model_copy(update={"action": "present", "role": t.role}))
        return result.model_copy(update={"role": t.role})

    async def _still_there(self, hit: ProvisionActionResult, host: str, url: str) -> bool:
        """A cached `present` holds only while the host has the model: its Ollama's tags (an Ollama model), or the
        inventory (a checkpoint on this host). Anything else, an unreachable Ollama included, is a miss."""
        try:
            if url and hit.ollama_name:
                return await self.backend(url).has(hit.ollama_name)
            return await self.store.find(host, parse_model_ref(hit.model).canonical) is not None
        except Exception as exc:
            log.info("cached result for %s on %s not confirmed (%s); checking again", hit.model, host, exc)
            return False

    async def _ensure(self, cmd: ProvisionCommand, t: Target, host: str, url: str) -> ProvisionActionResult:
        """`_attempt`, counted and timed (metrics.py: operations by kind and result)."""
        started = time.perf_counter()
        result, error = await self._attempt(cmd, t, host, url)
        metrics.operation_done(kind_of(t.model) or "unknown", result.action, time.perf_counter() - started, error)
        return result

    async def _attempt(
        self, cmd: ProvisionCommand, t: Target, host: str, url: str
    ) -> tuple[ProvisionActionResult, str | None]:
        """The action result, and for a failure its error type (the failure's channel, or `reference`)."""
        try:
            ref = parse_model_ref(t.model)
        except ModelRefError as exc:
            return action(t, host, "failed", str(exc)), "reference"
        reason = domain.skip_reason(auto_download=t.auto_download, skip_downloads=False, provider=t.provider)
        if reason is not None:
            return action(t, host, "skipped", reason), None
        try:
            provision = None if ref.kind == "local" else domain.provision_of(ref)
        except domain.BadReference as exc:
            return action(t, host, "failed", str(exc)), "reference"
        try:
            if provision is None:  # a file the host's probe found: registered into its Ollama (local_files.py)
                return await register_local(self, cmd, t, ref, host, url), None
            if provision == "ollama_pull":
                return await self._ollama(cmd, t, ref, host, url), None
            if provision == "gguf_import":
                return await self._import(cmd, t, ref, host, url), None
            return await self._checkpoint(cmd, t, ref), None
        except Failure as exc:
            await self._failed(cmd, t, host, str(exc), exc.channel, exc.status)
            return action(t, host, "failed", str(exc)), exc.channel or "other"

    def _skip(self, t: Target) -> str | None:
        return domain.skip_reason(
            auto_download=t.auto_download, skip_downloads=self.settings.skip_downloads, provider=t.provider
        )

    # --- Ollama pulls -------------------------------------------------------------------------

    async def _ollama(
        self, cmd: ProvisionCommand, t: Target, ref: ModelRef, host: str, url: str
    ) -> ProvisionActionResult:
        backend = self.backend(url)
        name = ref.ollama_name
        assert name  # every reference Ollama pulls has its name on the host
        installed = await backend_call(backend.installed())
        if name in installed:
            if cmd.force and self._skip(t) is None and await self._upstream_newer(name, installed[name].digest):
                return await self._flight(host, name, lambda: self._pull(cmd, t, ref, host, backend, name))
            if await self.store.find(host, ref.canonical) is None:
                return await self._news(cmd, t, ref, host, backend, name)
            return action(t, host, "present", ollama_name=name, size=installed[name].size)
        if (reason := self._skip(t)) is not None:
            return action(t, host, "skipped", reason, ollama_name=name)
        return await self._flight(host, name, lambda: self._pull(cmd, t, ref, host, backend, name))

    async def _news(
        self, cmd: ProvisionCommand, t: Target, ref: ModelRef, host: str, backend: OllamaBackend, name: str
    ) -> ProvisionActionResult:
        """The host has the model and the inventory has no row for it: news to the fleet, whoever put it there.

        Written as a pull would be, model.pulled included, by whichever request gets here first (the row is inserted
        only if absent, so a concurrent request that loses the race reports `present` and emits nothing). A resumed
        request (`Target.resumed`) reports `pulled` and audits `pull`: its own earlier delivery most likely pulled it
        and could not write that down (PostgreSQL away, then maybe a restart). Any other request reports `present`
        and audits `adopt` (the model was installed outside the fleet, or by a pull whose request is not back yet).
        """
        row = await self._pulled_row(ref, host, backend, name)
        verb, done = ("pull", "pulled") if t.resumed else ("adopt", "present")
        event = self._pulled(cmd, host, name, size_bytes=row.size_bytes)
        first = await self._record(cmd, host, row, verb, event, news=True)
        return action(t, host, done if first else "present", ollama_name=name, size=row.size_bytes)

    async def _pulled_row(self, ref: ModelRef, host: str, backend: OllamaBackend, name: str) -> InventoryRow:
        """The inventory row of an Ollama model on `host`, with what its Ollama reports (size, shape, quantization)."""
        size = (await backend_call(backend.installed())).get(name)
        details = await backend_call(backend.details(name))
        row = inventory_row(host, ref, name, size.size if size else None, None, None)
        row.parameter_count, row.context_window = details.parameter_count, details.context_window
        row.quantization = details.quantization or row.quantization
        return row

    async def _upstream_newer(self, name: str, digest: str | None) -> bool:
        """The last update check saw a registry digest for `name` other than the one this host holds."""
        seen = await self.store.get_state(REGISTRY_DIGESTS_STATE) or {}
        return domain.update_pending(digest, seen.get(name))

    async def _pull(
        self, cmd: ProvisionCommand, t: Target, ref: ModelRef, host: str, backend: OllamaBackend, name: str
    ) -> ProvisionActionResult:
        async with ProgressRelay(
            self.publish, self._progress(cmd, host, name), self.settings.progress_interval_s
        ) as relay:
            with self._transferring("ollama_pull"):
                await backend_call(backend.pull(name, relay.update))
        row = await self._pulled_row(ref, host, backend, name)
        pulled = self._pulled(cmd, host, name, size_bytes=row.size_bytes)
        await self._record(cmd, host, row, "pull", pulled)
        return action(t, host, "pulled", ollama_name=name, size=row.size_bytes)

    # --- pinned imports -----------------------------------------------------------------------

    async def _import(
        self, cmd: ProvisionCommand, t: Target, ref: ModelRef, host: str, url: str
    ) -> ProvisionActionResult:
        assert ref.repo and ref.quant and ref.revision and ref.ollama_name
        backend = self.backend(url)
        existing = await self.store.find(host, ref.canonical)
        if existing is not None and not cmd.force and await backend_call(backend.has(ref.ollama_name)):
            return action(
                t,
                host,
                "present",
                ollama_name=ref.ollama_name,
                size=existing.size_bytes,
                sha256=existing.sha256,
                revision=existing.revision,
            )
        if (reason := self._skip(t)) is not None:
            return action(t, host, "skipped", reason, ollama_name=ref.ollama_name)
        pinned = await hub_call(
            asyncio.to_thread(self.hub.pin, ref.repo, ref.revision, allow_unpinned=cmd.allow_unpinned)
        )
        files = await hub_call(asyncio.to_thread(self.hub.files, ref.repo, pinned.commit))
        try:
            name = domain.select_quant_file({p: f.size for p, f in files.items()}, ref.quant)
            self.hub.target(ref.repo, pinned.commit, name)
        except domain.BadReference as exc:
            raise Failure(str(exc), "hub") from exc
        got = await self._fetch(cmd, host, ref, pinned.commit, files[name])
        return await self._flight(host, ref.ollama_name, lambda: self._register(cmd, t, ref, host, backend, got, name))

    async def _fetch(
        self, cmd: ProvisionCommand, host: str, ref: ModelRef, commit: str, file: RemoteFile
    ) -> Downloaded:
        repo_id = ref.repo
        assert repo_id

        async def work() -> Downloaded:
            template = self._progress(cmd, host, ref.canonical)
            async with ProgressRelay(self.publish, template, self.settings.progress_interval_s) as relay:
                relay.update(0, file.size, "downloading")
                with self._transferring("hub_file"):
                    return await hub_call(in_thread(self.hub.download, repo_id, commit, file, relay.update))

        return await self.files.run((repo_id, commit, file.path), work)

    async def _register(
        self,
        cmd: ProvisionCommand,
        t: Target,
        ref: ModelRef,
        host: str,
        backend: OllamaBackend,
        got: Downloaded,
        file_name: str,
    ) -> ProvisionActionResult:
        assert ref.ollama_name
        await backend_call(backend.register(ref.ollama_name, got.path, got.sha256))
        row = inventory_row(host, ref, ref.ollama_name, got.size, got.sha256, got.commit)
        row.file_name = file_name
        row.quantization = domain.quantization_of(file_name) or ref.quant
        details = await backend_call(backend.details(ref.ollama_name))  # Ollama read the GGUF header
        row.parameter_count, row.context_window = details.parameter_count, details.context_window
        async with self.store.database.transaction() as session:
            dup = await self.store.duplicate_of(session, host, got.sha256, ref.canonical)
        if dup is not None:
            row.tags = [*row.tags, f"duplicate-of:{dup.model_id}"]
        pulled = self._pulled(cmd, host, ref.ollama_name, size_bytes=got.size, sha256=got.sha256, revision=got.commit)
        await self._record(cmd, host, row, "import", pulled)
        return action(
            t, host, "imported", ollama_name=ref.ollama_name, size=got.size, sha256=got.sha256, revision=got.commit
        )

    async def _checkpoint(self, cmd: ProvisionCommand, t: Target, ref: ModelRef) -> ProvisionActionResult:
        assert ref.repo and ref.revision
        host = self.host_id
        existing = await self.store.find(host, ref.canonical)
        if existing is not None and not cmd.force:
            return action(t, host, "present", revision=existing.revision)
        if (reason := self._skip(t)) is not None:
            return action(t, host, "skipped", reason)
        pinned = await hub_call(
            asyncio.to_thread(self.hub.pin, ref.repo, ref.revision, allow_unpinned=cmd.allow_unpinned)
        )
        async with ProgressRelay(
            self.publish, self._progress(cmd, host, ref.canonical), self.settings.progress_interval_s
        ) as relay:
            with self._transferring("checkpoint"):
                folder, got = await hub_call(in_thread(self.hub.fetch_checkpoint, pinned, relay.update))
        size = sum(g.size for g in got)
        row = inventory_row(host, ref, None, size, None, pinned.commit)
        row.file_name = str(Path(folder).relative_to(self.hub.models_dir))
        row.tags = ["safetensors", "pytorch-fallback"]
        pulled = self._pulled(cmd, host, ref.canonical, size_bytes=size, revision=pinned.commit)
        await self._record(cmd, host, row, "download", pulled)
        return action(t, host, "imported", size=size, revision=pinned.commit)

    # --- persistence --------------------------------------------------------------------------

    def _progress(self, cmd: ProvisionCommand, host: str, model: str) -> ProvisionProgress:
        return ProvisionProgress(
            producer="provisioner",
            host=self.host_id,
            correlation_id=cmd.request_id,
            request_id=cmd.request_id,
            target_host=host,
            model=model,
            status="starting",
        )

    def _pulled(self, cmd: ProvisionCommand, host: str, model: str, **facts: Any) -> ModelPulled:
        """The model.pulled fact of one request on one host; `facts` are its size_bytes, sha256, revision."""
        return ModelPulled(
            producer="provisioner", host=self.host_id, correlation_id=cmd.request_id, request_id=cmd.request_id,
            target_host=host, model=model, **facts,
        )  # fmt: skip

    async def _record(
        self,
        cmd: ProvisionCommand,
        host: str,
        row: InventoryRow,
        action: str,
        event: ModelPulled | None,
        *,
        news: bool = False,
    ) -> bool:
        """Write the row, its audit entry and `event` (through the outbox) in one transaction. With `news`, only if
        the inventory has no row for (host, model) yet: False (nothing written) when another request wrote it first.

        Should this fail (PostgreSQL away) after the model landed on the host, the request fails and is delivered
        again; that delivery, or any request for the model first, finds the model on the host and no row, and
        writes it as news (`_news`), model.pulled included: nothing is kept in memory, so a restart loses nothing.
        """
        async with self.store.database.transaction() as session:
            if news:
                if not await self.store.insert_inventory(session, row):
                    return False
            else:
                await self.store.upsert_inventory(session, row)
            self.store.audit(
                session,
                actor=cmd.requested_by or "provisioner",
                action=action,
                host=host,
                request_id=cmd.request_id,
                model=row.model_id,
                revision=row.revision,
                sha256=row.sha256,
                result="ok",
            )
            if event is not None:
                await self.outbox.add(session, event)
        self.outbox.wake()
        return True

    async def _failed(
        self, cmd: ProvisionCommand, t: Target, host: str, reason: str, channel: str | None, status: int | None
    ) -> None:
        event = ProvisionFailed(
            producer="provisioner",
            host=self.host_id,
            correlation_id=cmd.request_id,
            request_id=cmd.request_id,
            target_host=host,
            model=t.model,
            reason=reason[:8000],
            error_channel=channel,
            status_code=status,
        )
        async with self.store.database.transaction() as session:
            self.store.audit(
                session,
                actor=cmd.requested_by or "provisioner",
                action="provision",
                host=host,
                request_id=cmd.request_id,
                model=t.model,
                result="failed",
                detail=reason[:2000],
            )
            await self.outbox.add(session, event)
        self.outbox.wake()


class ActionCodec:
    """A flight's outcome in the lease: the action result, or the `Failure` (reason, channel, status) it raised."""

    def dump(self, result: ProvisionActionResult) -> dict[str, Any]:
        return result.model_dump(mode="json")

    def load(self, doc: dict[str, Any]) -> ProvisionActionResult:
        return ProvisionActionResult.model_validate(doc)

    def dump_failure(self, exc: BaseException) -> dict[str, Any] | None:
        if not isinstance(exc, Failure):
            return None
        return {"reason": str(exc), "channel": exc.channel, "status": exc.status}

    def load_failure(self, doc: dict[str, Any]) -> BaseException:
        return Failure(str(doc.get("reason", "")), doc.get("channel"), doc.get("status"))


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking download in a thread; its last argument is the progress callback, which also tells the
    thread to stop (raising `Cancelled`) once the awaiting task is cancelled, so a stopping service does not wait
    for the download to finish. The partial file stays for the next run to resume."""
    *head, progress = args
    stop = threading.Event()

    def step(done: int, total: int | None) -> None:
        if stop.is_set():
            raise Cancelled("the service is stopping")
        progress(done, total)

    try:
        return await asyncio.to_thread(fn, *head, step)
    except asyncio.CancelledError:
        stop.set()
        raise

"""Inventory operations behind the RPCs: list, sync (adopt what is there), delete, HF quantization listings."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from contracts.architecture import ModelArchitecture
from contracts.model_ref import ModelRefError, parse_model_ref
from contracts.provisioner import (
    InventoryDeleteReply,
    InventoryDeleteRequest,
    InventoryEntry,
    InventorySyncReply,
    InventorySyncRequest,
    ProvisionActionResult,
    Quantization,
    QuantizationsReply,
    QuantizationsRequest,
)
from services.provisioner import domain
from services.provisioner.flights import ResultCache
from services.provisioner.hosts import HostDirectory
from services.provisioner.hub import HubClient
from services.provisioner.ollama_backend import BackendError, OllamaBackend
from services.provisioner.store import InventoryRow, ProvisionerStore

log = logging.getLogger(__name__)


def _host_name(model: str) -> str:
    """The name a model not in the inventory has on its host: a reference's Ollama name, else what Ollama lists."""
    try:
        name = parse_model_ref(model).ollama_name
    except ModelRefError:
        name = None
    return name or domain.normalize_ollama(model)


def entry(row: InventoryRow) -> InventoryEntry:
    return InventoryEntry.model_validate(row.model_dump(exclude={"id"}))


class InventoryOps:
    def __init__(
        self,
        *,
        store: ProvisionerStore,
        hosts: HostDirectory,
        hub: HubClient,
        host_id: str,
        backend: Callable[[str], OllamaBackend],
        cache: ResultCache[ProvisionActionResult],
    ):
        self.store = store
        self.hosts = hosts
        self.hub = hub
        self.host_id = host_id
        self.backend = backend
        self.cache = cache

    async def sync(self, req: InventorySyncRequest) -> InventorySyncReply:
        urls, bad = await self.hosts.targets([req.host] if req.host else [])
        errors = list(bad.values())
        adopted: list[InventoryEntry] = []
        for host, url in urls.items():
            try:
                adopted += await self._sync_ollama(host, url, req.requested_by or "sync")
            except BackendError as exc:
                errors.append(f"{host}: {exc}")
        if req.host in (None, self.host_id):
            adopted += await self._sync_files(req.requested_by or "sync")
        return InventorySyncReply(adopted=adopted, hosts=sorted(urls), errors=errors)

    async def _sync_ollama(self, host: str, url: str, actor: str) -> list[InventoryEntry]:
        backend = self.backend(url)
        installed = await backend.installed()
        loaded = await backend.loaded()
        known = {r.ollama_name for r in await self.store.inventory(host)}
        new: list[InventoryRow] = []
        for name, m in installed.items():
            if name in known:
                continue
            new.append(
                InventoryRow(
                    host=host,
                    model_id=name,
                    display_name=name,
                    quantization=m.quantization,
                    size_bytes=m.size,
                    ollama_name=name,
                    source="custom_hf" if name.startswith("hf.co/") else "discovered",
                    tags=[t for t in (m.family, m.parameter_size) if t],
                )
            )
        async with self.store.database.transaction() as session:
            for row in new:
                await self.store.upsert_inventory(session, row)
                self.store.audit(session, actor=actor, action="adopt", host=host, model=row.model_id, result="ok")
            await self.store.touch(session, host, loaded)
        return [entry(r) for r in new]

    async def _sync_files(self, actor: str) -> list[InventoryEntry]:
        root = self.hub.models_dir
        rows = await self.store.inventory()
        known = {r.file_name for r in rows if r.host == self.host_id}
        known |= {f"{r.repo_id}/{r.revision}/{r.file_name}" for r in rows if r.repo_id and r.revision and r.file_name}
        known |= {r.file_name for r in rows if r.source == "pinned_hf" and r.file_name}
        found = await asyncio.to_thread(_model_files, root)
        new = [
            InventoryRow(
                host=self.host_id,
                model_id=f"file:{rel}",
                display_name=Path(rel).name,
                file_name=rel,
                quantization=domain.quantization_of(rel),
                size_bytes=size,
                source="local",
                tags=[Path(rel).suffix[1:]],
            )
            for rel, size in found
            if rel not in known
        ]
        async with self.store.database.transaction() as session:
            for row in new:
                await self.store.upsert_inventory(session, row)
                self.store.audit(
                    session, actor=actor, action="adopt", host=self.host_id, model=row.model_id, result="ok"
                )
        return [entry(r) for r in new]

    async def delete(self, req: InventoryDeleteRequest) -> InventoryDeleteReply:
        row = await self.store.find(req.host, req.model)
        removed_host = False
        if not req.inventory_only:
            if row is not None and row.source == "local" and row.file_name:
                path = (self.hub.models_dir / row.file_name).resolve()
                if path.is_relative_to(self.hub.models_dir.resolve()) and path.exists():
                    path.unlink()
                    removed_host = True
            else:
                urls, bad = await self.hosts.targets([req.host])
                if req.host in bad:
                    raise LookupError(bad[req.host])
                name = (row.ollama_name if row is not None else None) or _host_name(req.model)
                removed_host = await self.backend(urls[req.host]).delete(name)
        async with self.store.database.transaction() as session:
            removed_inv = await self.store.delete_inventory(session, req.host, req.model)
            self.store.audit(
                session,
                actor=req.requested_by or "api",
                action="delete",
                host=req.host,
                model=req.model,
                revision=row.revision if row else None,
                sha256=row.sha256 if row else None,
                result="ok" if (removed_inv or removed_host) else "not-found",
                detail="inventory only" if req.inventory_only else None,
            )
        self.cache.drop_host_model(req.host, lambda a: req.model in (a.model, a.ollama_name))
        if removed_host and row is not None and row.source == "pinned_hf":
            await self._drop_download(row)
        return InventoryDeleteReply(
            host=req.host, model=req.model, removed_from_host=removed_host, removed_from_inventory=removed_inv
        )

    async def _drop_download(self, row: InventoryRow) -> None:
        """A pinned import's verified file stays for other hosts; it goes with the last entry that holds it."""
        if not (row.repo_id and row.revision and row.file_name):
            return
        if any(r.sha256 == row.sha256 for r in await self.store.inventory()):
            return
        path = self.hub.target(row.repo_id, row.revision, row.file_name)
        if path.exists():
            path.unlink()
            log.info("removed %s: no inventory entry holds it any more", path)

    async def quantizations(
        self, req: QuantizationsRequest, architecture: ModelArchitecture | None = None
    ) -> QuantizationsReply:
        pinned = await asyncio.to_thread(self.hub.pin, req.repo_id, req.revision, allow_unpinned=True)
        files = await asyncio.to_thread(self.hub.files, req.repo_id, pinned.commit)
        hosts = await self.hosts.all()
        fit = domain.FitClass()
        out = []
        for path, f in sorted(files.items()):
            quant = domain.quantization_of(path)
            if not path.lower().endswith(".gguf") or quant is None:
                continue
            need, method = domain.estimate_need(f.size, req.context_tokens, architecture, quant)
            out.append(
                Quantization(
                    file_name=path,
                    quantization=quant,
                    size_bytes=f.size,
                    sha256=f.sha256,
                    estimated_vram_bytes=need,
                    method=method,
                    fit={h: fit.classify(need, host.gpu_free_bytes) for h, host in sorted(hosts.items())},
                )
            )
        return QuantizationsReply(repo_id=req.repo_id, revision=req.revision, commit=pinned.commit, quantizations=out)


def _model_files(root: Path) -> list[tuple[str, int]]:
    if not root.exists():
        return []
    return sorted(
        (str(p.relative_to(root)), p.stat().st_size)
        for p in root.rglob("*")
        if p.is_file() and p.suffix in (".gguf", ".bin")
    )

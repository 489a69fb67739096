"""Provisioning a `local:` model: a GGUF a host's probe found under MODELFLEET_MODEL_DIRS, registered into that host's
Ollama through its blobs + create API, with nothing downloaded (docs/provisioning.md, "Local models")."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from contracts.local_models import LocalModelFile
from contracts.model_ref import ModelRef
from contracts.provisioner import ProvisionActionResult, ProvisionCommand
from services.provisioner import domain
from services.provisioner.ollama_backend import OllamaBackend
from services.provisioner.outcomes import Failure, Target, action, backend_call, inventory_row
from services.provisioner.store import InventoryRow

if TYPE_CHECKING:
    from services.provisioner.provisioning import Provisioner


async def register_local(
    p: Provisioner, cmd: ProvisionCommand, t: Target, ref: ModelRef, host: str, url: str
) -> ProvisionActionResult:
    """`present` when the host's Ollama has the file's name, else `imported`: its blob pushed (unless Ollama holds
    that digest already) and the model created. A host without the file is skipped, or failed when named."""
    file = await p.catalog.local_file(host, ref.canonical)
    if file is None:
        why = f"host {host!r} reports no file {ref.canonical} (its probe's MODELFLEET_MODEL_DIRS)"
        if cmd.hosts:
            raise Failure(why, "local")
        return action(t, host, "skipped", why)
    sha256 = _usable(file, host)
    name = domain.local_ollama_name(ref.canonical.removeprefix("local:"), sha256)
    backend = p.backend(url)
    installed = await backend_call(backend.installed())
    if name in installed and not cmd.force:
        if await p.store.find(host, ref.canonical) is None:  # news to the fleet, as in Provisioner._news
            row = _row(host, ref, name, file, sha256)
            details = await backend_call(backend.details(name))
            row.parameter_count, row.context_window = details.parameter_count, details.context_window
            verb, done = ("register", "imported") if t.resumed else ("adopt", "present")
            pulled = p._pulled(cmd, host, name, size_bytes=file.size_bytes, sha256=sha256)
            if await p._record(cmd, host, row, verb, pulled, news=True):
                return action(t, host, done, ollama_name=name, size=file.size_bytes, sha256=sha256)
        return action(t, host, "present", ollama_name=name, size=file.size_bytes, sha256=sha256)
    return await p._flight(host, name, lambda: _register(p, cmd, t, ref, host, backend, file, sha256, name))


def _usable(file: LocalModelFile, host: str) -> str:
    """The file's sha256, or a failure naming why it cannot be registered (yet)."""
    if file.error:
        raise Failure(f"{file.path} on {host}: {file.error}", "local")
    if file.shape is None and file.architecture is None:
        raise Failure(f"{file.path} on {host} is not a GGUF file: Ollama imports GGUF files only", "local")
    if file.sha256 is None:
        raise Failure(
            f"{file.path} on {host} is still being hashed by its probe; provision it again once "
            "`modelfleet models list --local` shows its sha256",
            "local",
        )
    return file.sha256


def _readable_here(file: LocalModelFile) -> Path | None:
    """The reported path, if this process can read it with the size the probe reported (same host, or a directory
    shared at the same path)."""
    path = Path(file.path)
    try:
        same = path.stat().st_size == file.size_bytes and os.access(path, os.R_OK)
    except OSError:
        return None
    return path if same else None


async def _register(
    p: Provisioner, cmd: ProvisionCommand, t: Target, ref: ModelRef, host: str, backend: OllamaBackend,
    file: LocalModelFile, sha256: str, name: str,
) -> ProvisionActionResult:  # fmt: skip
    path = _readable_here(file)
    if path is None and not await backend_call(backend.has_blob(sha256)):
        raise Failure(
            f"{file.path} is on host {host!r}, and this provisioner (host {p.host_id!r}) cannot read it there with "
            f"{file.size_bytes} bytes, nor does that Ollama hold blob sha256:{sha256}: run a provisioner on {host!r}, "
            "or share the model directory at the same path",
            "local",
        )
    # register: HEAD the blob, POST it unless present (Ollama checks the digest of what it receives), then create.
    await backend_call(backend.register(name, path or Path(file.path), sha256))
    row = _row(host, ref, name, file, sha256)
    details = await backend_call(backend.details(name))  # Ollama read the GGUF header
    row.parameter_count, row.context_window = details.parameter_count, details.context_window
    pulled = p._pulled(cmd, host, name, size_bytes=file.size_bytes, sha256=sha256)
    await p._record(cmd, host, row, "register", pulled)
    return action(t, host, "imported", ollama_name=name, size=file.size_bytes, sha256=sha256)


def _row(host: str, ref: ModelRef, name: str, file: LocalModelFile, sha256: str) -> InventoryRow:
    row = inventory_row(host, ref, name, file.size_bytes, sha256, None)
    row.file_name = file.path
    row.quantization = file.quant
    row.tags = ["gguf", "local"]
    return row

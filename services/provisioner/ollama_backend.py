"""One host's Ollama through `ollama.AsyncClient`: pull with progress, register a verified GGUF, list, show, delete."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ollama

from services.provisioner import domain
from services.provisioner.metrics import DOWNLOADED, VERIFICATION_FAILURES
from services.runtime.egress import EgressDenied, EgressPolicy, default_policy

Progress = Callable[[int, int | None, str], None]


class BackendError(RuntimeError):
    """Ollama refused or failed: `channel` is http, stream or connection; `status` is -1 for a mid-stream error."""

    def __init__(self, message: str, channel: str, status: int | None = None):
        super().__init__(message)
        self.channel = channel
        self.status = status


@dataclass(frozen=True)
class InstalledModel:
    name: str
    size: int | None
    digest: str | None
    family: str | None
    parameter_size: str | None
    quantization: str | None


@dataclass(frozen=True)
class ModelDetails:
    parameter_count: int | None
    context_window: int | None
    quantization: str | None


def backends(timeout_s: float) -> Callable[[str], OllamaBackend]:
    """One `OllamaBackend` per Ollama URL, made on first use and kept for every later call: building its HTTP client
    (the SSL context's CA bundle) took ~25 ms of CPU, which every provision paid when each call made its own."""
    made: dict[str, OllamaBackend] = {}

    def backend(url: str) -> OllamaBackend:
        found = made.get(url)
        if found is None:
            found = made[url] = OllamaBackend(url, timeout_s)
        return found

    return backend


class OllamaBackend:
    def __init__(self, url: str, timeout_s: float = 30.0, egress: EgressPolicy | None = None):
        self.url = url  # the operator's Ollama (probe or static map): configured, not a user's destination
        # A host whose Ollama takes no connection is "unreachable" within 10 s, whatever the (long) read bound.
        # One backend per URL serves every caller (`backends`), long pulls included: no bound on connections. None is
        # kept alive: each call connects afresh (cheap to a host's Ollama), so a restarted Ollama is never asked over
        # a connection it dropped, and a stopped test peer never answers over an old one.
        self.client = ollama.AsyncClient(
            host=url,
            timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
        )
        self.egress = egress

    async def check_registry(self, name: str) -> None:
        """A model name with a registry host (`host[:port]/namespace/model[:tag]`) makes Ollama connect there: the
        host goes through the egress policy first (Ollama resolves it again itself: docs/provisioning.md).
        Ollama's own registry and Hugging Face pass-through names (`hf.co/...`) are fixed destinations."""
        parts = name.split("@", 1)[0].split("/")
        if len(parts) < 3:
            return
        host, _, port = parts[0].partition(":")
        if host.lower() in (domain.OLLAMA_REGISTRY_HOST, "hf.co", "huggingface.co"):
            return
        try:
            await (self.egress or default_policy()).acheck_host(host, int(port) if port.isdigit() else 443)
        except EgressDenied as exc:
            raise BackendError(f"pull of {name!r}: registry {exc}", "egress") from None

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except ollama.ResponseError as exc:
            channel = "stream" if exc.status_code == -1 else "http"
            raise BackendError(f"Ollama at {self.url}: {exc.error}", channel, exc.status_code) from exc
        except (ConnectionError, httpx.TransportError) as exc:
            raise BackendError(f"Ollama at {self.url} is unreachable: {exc}", "connection") from exc

    async def installed(self) -> dict[str, InstalledModel]:
        listing = await self._call(self.client.list())
        out: dict[str, InstalledModel] = {}
        for m in listing.models:
            d = m.details
            out[str(m.model)] = InstalledModel(
                str(m.model),
                m.size,
                m.digest,
                d.family if d else None,
                d.parameter_size if d else None,
                d.quantization_level if d else None,
            )
        return out

    async def has(self, name: str) -> bool:
        return domain.normalize_ollama(name) in await self.installed()

    async def pull(self, name: str, progress: Progress) -> None:
        """Pull `name`, reporting (bytes done, total, status) summed over layers as Ollama streams them."""
        meter = domain.LayerMeter()
        await self.check_registry(name)

        async def run() -> None:
            async for part in await self.client.pull(name, stream=True):
                done, total = meter.update(part.digest or "", part.completed, part.total)
                progress(done, total or None, part.status or "")

        try:
            await self._call(run())
        finally:  # what Ollama reported having pulled, a failed pull's part included
            DOWNLOADED.add(sum(c for c, _ in meter.layers.values()), {"modelfleet.transfer.source": "ollama"})

    async def has_blob(self, sha256: str) -> bool:
        """HEAD /api/blobs/sha256:<digest>: whether Ollama already holds this file's bytes."""
        head = await self._call(self.client._client.head(f"/api/blobs/sha256:{sha256}"))
        return bool(head.status_code == 200)

    async def register(self, name: str, path: Path, sha256: str) -> None:
        """POST /api/blobs/sha256:<digest> (unless present), then /api/create with `files`."""
        digest = f"sha256:{sha256}"
        head = await self._call(self.client._client.head(f"/api/blobs/{digest}"))
        if head.status_code != 200:
            uploaded = await self._call(self.client.create_blob(path))
            if uploaded != digest:
                VERIFICATION_FAILURES.add(1, {"modelfleet.verification.stage": "register"})
                raise BackendError(f"Ollama at {self.url} holds {uploaded} for a file verified as {digest}", "verify")
        await self._call(self.client.create(model=name, files={path.name: digest}))

    async def details(self, name: str) -> ModelDetails:
        shown = await self._call(self.client.show(name))
        info: dict[str, Any] = dict(shown.modelinfo or {})
        arch = info.get("general.architecture")
        ctx = info.get(f"{arch}.context_length") if arch else None
        params = info.get("general.parameter_count")
        quant = shown.details.quantization_level if shown.details else None
        return ModelDetails(
            int(params) if isinstance(params, int) else None, int(ctx) if isinstance(ctx, int) else None, quant
        )

    async def loaded(self) -> set[str]:
        running = await self._call(self.client.ps())
        return {str(m.model) for m in running.models}

    async def delete(self, name: str) -> bool:
        """True if deleted, False if Ollama did not have it."""
        try:
            await self._call(self.client.delete(name))
        except BackendError as exc:
            if exc.status == 404:
                return False
            raise
        return True

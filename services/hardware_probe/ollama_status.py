"""The host's Ollama, through the official client: reachable or not, its version, /api/tags and /api/ps."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import httpx
import ollama

from contracts.hardware import BackendLoadedModel, BackendModel, BackendStatus, OllamaLoadedModel

_FAULTS = (ConnectionError, httpx.HTTPError, ollama.ResponseError, OSError, ValueError, TimeoutError)


@dataclass(frozen=True)
class OllamaReading:
    reachable: bool
    version: str | None = None
    models: list[OllamaLoadedModel] = field(default_factory=list)
    error: str | None = None
    installed: list[BackendModel] = field(default_factory=list)

    def status(self, url: str) -> BackendStatus:
        """The same reading as one entry of the sample's `backends`."""
        loaded = [
            BackendLoadedModel(
                name=m.name,
                size_bytes=m.size_bytes,
                size_vram_bytes=m.size_vram_bytes,
                context_length=m.context_length,
                expires_at=m.expires_at,
            )
            for m in self.models
        ]
        return BackendStatus(
            kind="ollama", base_url=url.rstrip("/"), reachable=self.reachable, error=self.error, version=self.version,
            installed=self.installed, loaded=loaded,
        )  # fmt: skip


def _loaded(m: ollama.ProcessResponse.Model) -> OllamaLoadedModel:
    return OllamaLoadedModel(
        name=m.name or m.model or "?", model=m.model, digest=m.digest, size_bytes=int(m.size or 0),
        size_vram_bytes=int(m.size_vram or 0), expires_at=m.expires_at, context_length=m.context_length,
    )  # fmt: skip


def _installed(m: ollama.ListResponse.Model) -> BackendModel:
    return BackendModel(name=m.model or "?", size_bytes=int(m.size) if m.size is not None else None, digest=m.digest)


async def _known(version: str) -> str | None:
    return version


def _error(exc: BaseException) -> str:
    return (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)[:500]


class OllamaStatus:
    """One AsyncClient for the daemon's life; every failure is a reading, never an exception."""

    def __init__(self, url: str, timeout_s: float = 2.0):
        self.url = url
        self.timeout_s = timeout_s
        self._client = ollama.AsyncClient(host=url, timeout=timeout_s)
        self._version: str | None = None  # asked again only after Ollama was unreachable (a restart may upgrade it)

    async def read(self) -> OllamaReading:
        # /api/ps and /api/tags (and /api/version when not known) at once: one round trip of wall time, and
        # wait_for bounds the whole reading by the timeout whatever phase a silent server stalls in.
        version = self._ask_version() if self._version is None else _known(self._version)
        try:
            ps, tags, self._version = await asyncio.wait_for(
                asyncio.gather(self._client.ps(), self._client.list(), version), self.timeout_s
            )
        except _FAULTS as exc:
            self._version = None
            return OllamaReading(False, error=_error(exc))
        return OllamaReading(
            True, self._version, [_loaded(m) for m in ps.models], installed=[_installed(m) for m in tags.models]
        )

    async def _ask_version(self) -> str | None:
        # The client has no version() call; /api/version is a plain GET on the same connection pool.
        try:
            response = await self._client._client.get("/api/version")
            return str(response.json().get("version")) if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None

    async def close(self) -> None:
        try:
            await self._client._client.aclose()
        except AttributeError:
            pass

"""The host's Ollama, through the official client: reachable or not, its version, and /api/ps."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
import ollama

from contracts.hardware import OllamaLoadedModel


@dataclass(frozen=True)
class OllamaReading:
    reachable: bool
    version: str | None = None
    models: list[OllamaLoadedModel] = field(default_factory=list)
    error: str | None = None


def _loaded(m: ollama.ProcessResponse.Model) -> OllamaLoadedModel:
    return OllamaLoadedModel(
        name=m.name or m.model or "?", model=m.model, digest=m.digest, size_bytes=int(m.size or 0),
        size_vram_bytes=int(m.size_vram or 0), expires_at=m.expires_at, context_length=m.context_length,
    )  # fmt: skip


class OllamaStatus:
    """One AsyncClient for the daemon's life; every failure is a reading, never an exception."""

    def __init__(self, url: str, timeout_s: float = 2.0):
        self.url = url
        self._client = ollama.AsyncClient(host=url, timeout=timeout_s)
        self._version: str | None = None  # asked again only after Ollama was unreachable (a restart may upgrade it)

    async def read(self) -> OllamaReading:
        try:
            ps = await self._client.ps()
        except (ConnectionError, httpx.HTTPError, ollama.ResponseError, OSError, ValueError) as exc:
            self._version = None
            return OllamaReading(False, error=f"{type(exc).__name__}: {exc}"[:500])
        if self._version is None:
            self._version = await self._ask_version()
        return OllamaReading(True, self._version, [_loaded(m) for m in ps.models])

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

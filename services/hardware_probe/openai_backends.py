"""OpenAI-compatible servers on this host (llama.cpp, vLLM, SGLang, LM Studio): reachable or not, GET <base>/models."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx

from contracts.hardware import BackendLoadedModel, BackendModel, BackendStatus

#: Characters of an error body or message kept in a reading (the contract's text limit is 1024).
_ERROR_CHARS = 500


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def listed_models(doc: Any) -> list[tuple[str, int | None, int | None]]:
    """(id, size in bytes, context length) of each entry of a `/models` answer; ValueError when it is not one.

    Only `id` is standard. vLLM adds `max_model_len` (the context it serves); llama.cpp's `llama-server` adds
    `meta.size` (bytes of the weights). Either is kept when present, anything else ignored."""
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        raise ValueError("not an OpenAI model list: no `data` array")
    out: list[tuple[str, int | None, int | None]] = []
    for entry in data:
        model_id = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(model_id, str) or not model_id:
            raise ValueError(f"not an OpenAI model list: an entry without an `id`: {str(entry)[:100]}")
        meta = entry.get("meta")
        size = _int(meta.get("size")) if isinstance(meta, dict) else None
        out.append((model_id[:1024], size, _int(entry.get("max_model_len"))))
    return out


class OpenAIBackends:
    """One httpx client for the daemon's life; every server is asked at once and every failure is a reading, so a
    dead or silent server costs a sample at most `timeout_s`, never an exception.

    A server that accepts the connection but does not list in time is busy, not down, once it has listed before:
    llama-cpp-python's server answers nothing while it generates. Its last listing is kept, marked with the error;
    the router's active checks and the gateways' call reports judge whether it is hung (docs/hardware.md)."""

    def __init__(self, urls: Sequence[str], timeout_s: float = 2.0):
        self.urls = [u.rstrip("/") for u in urls]
        self.timeout_s = timeout_s
        self._client = httpx.AsyncClient(timeout=timeout_s, headers={"Accept": "application/json"})
        self._listed: dict[str, BackendStatus] = {}

    async def read(self) -> list[BackendStatus]:
        return list(await asyncio.gather(*(self._read_one(url) for url in self.urls)))

    async def _read_one(self, base_url: str) -> BackendStatus:
        try:
            # httpx's timeout bounds each phase (connect, read...); wait_for bounds the whole listing.
            response = await asyncio.wait_for(self._client.get(f"{base_url}/models"), self.timeout_s)
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            last = self._listed.get(base_url)
            if last is not None and _connected(exc):
                busy = (
                    f"busy: no answer to GET {base_url}/models within {self.timeout_s:g}s ({reason}); last listing kept"
                )
                return last.model_copy(update={"error": busy[:_ERROR_CHARS]})
            self._listed.pop(base_url, None)
            return _down(base_url, reason)
        if response.status_code != 200:
            self._listed.pop(base_url, None)
            # A server that answers but will not list (401 without its API key, 404 on a wrong base URL) is of no
            # use to a caller either: unreachable, with its answer as the reason.
            return _down(base_url, f"HTTP {response.status_code} from GET {base_url}/models: {response.text}")
        try:
            models = listed_models(response.json())
        except ValueError as exc:
            self._listed.pop(base_url, None)
            return _down(base_url, str(exc))
        status = self._listed[base_url] = BackendStatus(
            kind="openai", base_url=base_url, reachable=True,
            installed=[BackendModel(name=n, size_bytes=size) for n, size, _ in models],
            loaded=[BackendLoadedModel(name=n, size_bytes=size, context_length=ctx) for n, size, ctx in models],
        )  # fmt: skip
        return status

    async def close(self) -> None:
        await self._client.aclose()


def _connected(exc: BaseException) -> bool:
    """The connection was made and the answer is what did not come: a read or write timeout, or the whole-listing
    bound (`wait_for`) running out, which a refused or unroutable connection never reaches first."""
    return isinstance(exc, httpx.ReadTimeout | httpx.WriteTimeout | TimeoutError)


def _down(base_url: str, error: str) -> BackendStatus:
    return BackendStatus(kind="openai", base_url=base_url, reachable=False, error=error[:_ERROR_CHARS])

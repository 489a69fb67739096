"""The Ollama registry's manifest API through httpx: the digest of the manifest a registry serves for a model."""

from __future__ import annotations

import hashlib

import httpx

from services.provisioner import domain
from services.runtime.egress import EgressDenied, EgressTransport

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


class RegistryError(RuntimeError):
    """The registry could not be asked or did not know the model; `status` is its HTTP status when it answered."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class OllamaRegistry:
    """One shared httpx client; `digest()` never raises anything but RegistryError."""

    def __init__(self, timeout_s: float = 10.0, transport: httpx.AsyncBaseTransport | None = None):
        # a registry host comes from a model's name: checked by the egress policy, every redirect included
        transport = transport or EgressTransport()
        self.client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=True, transport=transport)

    async def digest(self, ref: domain.RegistryRef) -> str:
        """`sha256:<hex>` of the manifest: the answer's `Docker-Content-Digest`, else the sha256 of its body."""
        url = ref.manifest_url
        try:
            answer = await self.client.get(url, headers={"Accept": MANIFEST_V2})
        except httpx.HTTPError as exc:
            raise RegistryError(f"registry unreachable at {url}: {type(exc).__name__}: {exc}") from exc
        except EgressDenied as exc:
            raise RegistryError(f"registry of {ref.namespace}/{ref.model}: {exc}") from None
        if answer.status_code == 404:
            raise RegistryError(f"{url}: 404, the registry has no such model or tag", 404)
        if answer.status_code != 200:
            raise RegistryError(f"{url}: HTTP {answer.status_code}: {answer.text[:200]}", answer.status_code)
        header = answer.headers.get("Docker-Content-Digest")
        try:
            return domain.as_digest(header) if header else "sha256:" + hashlib.sha256(answer.content).hexdigest()
        except ValueError as exc:
            raise RegistryError(f"{url}: Docker-Content-Digest {header!r} is not a sha256 digest") from exc

    async def close(self) -> None:
        await self.client.aclose()

"""The provisioner's side of the catalog: `rpc.catalog.roles.v1` (the roles of the active profile set) and
`rpc.catalog.local_models.list.v1` (the files a host's probe found)."""

from __future__ import annotations

import asyncio
import logging
from typing import TypeVar

from contracts.catalog import ModelDoc, ModelInfoRequest, RolesReply, RolesRequest
from contracts.envelope import Contract
from contracts.local_models import LocalModelFile, LocalModelsRequest
from contracts.rpc import RpcError, RpcRequest
from services.provisioner.outcomes import Failure
from services.runtime.rpc import Rpc

#: A catalog restarting answers nothing (504) or is not subscribed yet (503); only these are worth asking again.
RETRIED = frozenset({503, 504})
R = TypeVar("R", bound=Contract)
log = logging.getLogger(__name__)


class CatalogClient:
    def __init__(self, rpc: Rpc, timeout_s: float, *, attempts: int = 3, backoff_s: float = 0.2):
        self.rpc = rpc
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s

    async def roles(self) -> RolesReply:
        """Ask the catalog; a 503/504 is retried, any other error fails at once. Raises `Failure` naming why."""
        return await self._ask(RolesRequest())

    async def model(self, name: str) -> ModelDoc | None:
        """The library entry `name` (id, Ollama name or HF repo) names, asked once; None when the catalog has none or
        does not answer (the caller then does without it)."""
        try:
            return await self.rpc.ask(ModelInfoRequest(model=name), timeout_s=self.timeout_s)
        except RpcError as exc:
            if exc.status != 404:
                log.info("no library entry for %s: %s", name, _describe(exc))
            return None

    async def local_file(self, host: str, ref: str) -> LocalModelFile | None:
        """The file `ref` (`local:<path>`) that `host`'s probe reports, the first model directory's where several
        have it (MODELFLEET_MODEL_DIRS is searched like PATH); None if that host reports no such file."""
        reply = await self._ask(LocalModelsRequest(host=host, ref=ref))
        files = [m.file for m in reply.models if m.file.shadowed_by is None]
        return files[0] if files else None

    async def _ask(self, req: RpcRequest[R]) -> R:
        for attempt in range(1, self.attempts + 1):
            try:
                return await self.rpc.ask(req, timeout_s=self.timeout_s)
            except RpcError as exc:
                if exc.status not in RETRIED:
                    raise Failure(f"the catalog refused {req.SUBJECT}: {_describe(exc)}") from exc
                if attempt == self.attempts:
                    raise Failure(
                        f"the catalog did not answer {req.SUBJECT} ({self.attempts} tries): {_describe(exc)}"
                    ) from exc
            await asyncio.sleep(self.backoff_s * attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")


def _describe(exc: RpcError) -> str:
    return f"{exc.status} {exc.code}: {exc.detail}"
